"""``rpdist certify`` and ``rpdist predict``: run on a dataset, write Parquet, print a summary."""

from __future__ import annotations

from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from rpdist.smoothing.noise import DEFAULT_BLOCK

DATASET = typer.Option(..., "--dataset", "-d", help="Built-in name (see `rpdist datasets`) or a .csv/.parquet/.npz file.")
MODEL = typer.Option(None, "--model", "-m", help="TorchScript file, or a state dict with --arch. Default: the dataset's built-in model.")
ARCH = typer.Option(None, "--arch", help="Architecture of a state-dict --model (mlp, cnn, linear); loaded with weights_only=True.")
TRAIN_SIGMA = typer.Option(None, "--train-sigma", help="Noise level for training the built-in model. Default: --sigma.")
SIGMA = typer.Option(..., "--sigma", "-s", help="Smoothing noise level σ (in the model's input units).")
N = typer.Option(100_000, "--n", help="Monte Carlo samples for estimation (CERTIFY) or for the test (PREDICT).")
N0 = typer.Option(100, "--n0", help="Selection samples (CERTIFY only); never reused for estimation.")
ALPHA = typer.Option(0.001, "--alpha", help="Failure probability of each certificate.")
SEED = typer.Option(0, "--seed", help="Seed of the counter-based noise streams.")
BATCH = typer.Option(None, "--batch-size", help="Samples per forward pass. Default 4096 on CPU, 32768 on CUDA.")
WORKERS = typer.Option(None, "--workers", "-w", help="Model replicas. Default: one per CPU (or GPU) of the Ray cluster.")
ADDRESS = typer.Option(None, "--address", help="Ray cluster to join (e.g. auto or ray://host:10001). Default: an embedded local Ray.")
SPLIT = typer.Option("test", "--split", help="train, test or all.")
LIMIT = typer.Option(None, "--limit", help="Only the first LIMIT inputs of the split.")
LABEL = typer.Option("label", "--label-column", help="Label column of a .csv/.parquet dataset.")
OUT = typer.Option("results", "--out", "-o", help="Output root: a directory or a pyarrow URI (s3://bucket/x); the run writes OUT/RUN_ID/.")
RUN_ID = typer.Option(None, "--run-id", help="Run directory name. Rerunning an interrupted run id resumes it.")
NOISE_BLOCK = typer.Option(DEFAULT_BLOCK, "--noise-block", help="Samples per counter-based noise block.")
DEVICE = typer.Option(None, "--device", help="cpu or cuda. Default: cuda when the cluster has GPUs.")
QUIET = typer.Option(False, "--quiet", "-q", help="No progress bar.")


def register(app: typer.Typer) -> None:
    @app.command("certify")
    def certify_cmd(dataset: str = DATASET, model: Optional[str] = MODEL, arch: Optional[str] = ARCH,
                    train_sigma: Optional[float] = TRAIN_SIGMA, sigma: float = SIGMA, n: int = N, n0: int = N0,
                    alpha: float = ALPHA, seed: int = SEED, batch_size: Optional[int] = BATCH,
                    workers: Optional[int] = WORKERS, address: Optional[str] = ADDRESS, split: str = SPLIT,
                    limit: Optional[int] = LIMIT, label_column: str = LABEL, out: str = OUT,
                    run_id: Optional[str] = RUN_ID, noise_block: int = NOISE_BLOCK,
                    device: Optional[str] = DEVICE, quiet: bool = QUIET) -> None:
        """CERTIFY each input: smoothed prediction and certified ℓ2 radius (Cohen et al.)."""
        _run("certify", locals())

    @app.command("predict")
    def predict_cmd(dataset: str = DATASET, model: Optional[str] = MODEL, arch: Optional[str] = ARCH,
                    train_sigma: Optional[float] = TRAIN_SIGMA, sigma: float = SIGMA, n: int = N,
                    alpha: float = ALPHA, seed: int = SEED, batch_size: Optional[int] = BATCH,
                    workers: Optional[int] = WORKERS, address: Optional[str] = ADDRESS, split: str = SPLIT,
                    limit: Optional[int] = LIMIT, label_column: str = LABEL, out: str = OUT,
                    run_id: Optional[str] = RUN_ID, noise_block: int = NOISE_BLOCK,
                    device: Optional[str] = DEVICE, quiet: bool = QUIET) -> None:
        """PREDICT each input: the smoothed label, or -1 (abstain) when the vote is not significant."""
        _run("predict", locals())


def _run(analysis: str, options: dict) -> None:
    from rpdist.pipelines.run import RunSpec, execute
    from rpdist.smoothing.job import SmoothingConfig

    o = options
    config = SmoothingConfig(analysis, o["sigma"], o["n"], o["alpha"], o.get("n0"), o["seed"], o["batch_size"],
                             o["noise_block"])
    spec = RunSpec(config=config, dataset=o["dataset"], split=o["split"], label_column=o["label_column"],
                   limit=o["limit"], model=o["model"], arch=o["arch"], train_sigma=o["train_sigma"],
                   workers=o["workers"], address=o["address"], device=o["device"], out=str(o["out"]),
                   run_id=o["run_id"])
    outcome = execute(spec, progress=not o["quiet"])
    print_summary(outcome, analysis, config.sigma)


def print_summary(outcome, analysis: str, sigma: float) -> None:
    console = Console()
    s = outcome.summary
    table = Table(title=f"{analysis} summary ({s['inputs']} inputs, σ={sigma:g})", show_header=True)
    table.add_column("metric")
    table.add_column("value", justify="right")
    if analysis == "certify":
        for radius, acc in s["certified_accuracy"].items():
            table.add_row(f"certified accuracy @ r≥{radius}", _pct(acc))
        table.add_row("mean radius", f"{s['mean_radius']:.4f}")
    else:
        table.add_row("accuracy (abstain = wrong)", _pct(s["accuracy"]))
    table.add_row("abstain rate", _pct(s["abstain_rate"]))
    rate = s.get("samples_per_second", outcome.manifest.get("timings", {}).get("samples_per_second"))
    if rate:
        table.add_row("samples/s", f"{rate:,.0f}")
    console.print(table)
    if s.get("nonfinite_inputs"):
        console.print(f"warning: the model gave NaN or inf logits on noisy samples of {s['nonfinite_inputs']} "
                      f"input(s); they abstain (column nonfinite)", style="yellow", soft_wrap=True)
    if outcome.resumed_chunks:
        console.print(f"resumed: {outcome.resumed_chunks} chunk(s) were already done")
    console.print(f"results: {outcome.path}")


def _pct(value: float) -> str:
    return "n/a (no labels)" if value != value else f"{100 * value:.1f}%"
