"""Resuming refuses to mix: another model, batch size, device type or noise scheme is named and refused."""

from __future__ import annotations

import json

import pytest
import torch
import yaml

from rpdist.cli.main import main
from rpdist.errors import InputError
from rpdist.io.store import describe_change


def run_cli(args: list[str], capsys) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    captured = capsys.readouterr()
    return exit_info.value.code, captured.out, captured.err


def _save_model(path, seed: int) -> str:
    torch.manual_seed(seed)
    torch.jit.save(torch.jit.script(torch.nn.Linear(11, 2)), str(path))
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


def _stop_when_recorded(manifest_path, point: str):
    """An on_unit callback that interrupts the sweep as soon as ``point`` has been started."""

    def on_unit(unit, samples):
        if point in json.loads(manifest_path.read_text())["details"].get("resume", {}):
            raise KeyboardInterrupt

    return on_unit


def test_describe_change_names_the_first_differing_setting():
    old = {"model": {"sha256": "1a" * 32}, "batch_size": 4096, "device": "cpu"}
    line = describe_change(old, {**old, "model": {"sha256": "9f" * 32}}, "--sweep-id", " for sigma=0.5")
    assert line.startswith("started with model sha256 1a1a1a1a1a1a… for sigma=0.5, now 9f9f9f9f9f9f…")
    assert line.endswith("choose another --sweep-id or restore the model")
    assert "batch size 4096, now 32768" in describe_change(old, {**old, "batch_size": 32768})
    assert "device type 'cpu', now 'cuda'" in describe_change(old, {**old, "device": "cuda"})
    assert "noise generator nothing recorded, now 2" in describe_change({}, {"noise": 2})


@pytest.mark.slow
def test_resumed_sweep_refuses_a_replaced_model(ray_session, tmp_path, capsys):
    from rpdist.pipelines.sweep import load_sweep, run_sweep

    model = tmp_path / "model.pt"
    old_sha = _save_model(model, 0)
    sweep_file = tmp_path / "grid.yaml"
    sweep_file.write_text(yaml.safe_dump({"dataset": "insurance", "model": str(model), "sigma": [0.5, 1.0],
                                          "n": [1000], "alpha": [0.01], "limit": 20}))
    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):  # σ = 0.5 finishes, σ = 1 is interrupted at its first unit
        run_sweep(load_sweep(sweep_file), out=out, sweep_id="grid", progress=False,
                  on_unit=_stop_when_recorded(out / "grid" / "manifest.json", "sigma=1.0"))
    assert list((out / "grid" / "sigma=0.5").rglob("chunk-*.parquet"))
    assert not list((out / "grid" / "sigma=1.0").rglob("chunk-*.parquet"))

    new_sha = _save_model(model, 1)  # the file is replaced by another model before the rerun
    assert new_sha != old_sha
    code, _, err = run_cli(["sweep", str(sweep_file), "--out", str(out), "--quiet"], capsys)
    assert code == 2 and err.count("\n") == 1, err
    assert f"model sha256 {old_sha[:12]}… for sigma=0.5, now {new_sha[:12]}…" in err
    assert "choose another --sweep-id or restore the model" in err
    assert not list((out / "grid" / "sigma=1.0").rglob("chunk-*.parquet")), "nothing is computed with the new model"

    _save_model(model, 0)  # restored: the sweep resumes and completes
    outcome = run_sweep(load_sweep(sweep_file), out=out, sweep_id="grid", progress=False)
    assert outcome.manifest["status"] == "complete"


@pytest.mark.slow
def test_resumed_sweep_refuses_another_default_batch_size(ray_session, tmp_path, monkeypatch):
    """The default batch size (4096 on CPU, 32768 on CUDA) moves the chunk boundaries: a sweep resumed
    with another one would duplicate or drop rows, so it is refused."""
    from rpdist.distributed import plan as engine_plan
    from rpdist.distributed import pool as engine_pool
    from rpdist.pipelines.sweep import parse_sweep, run_sweep

    monkeypatch.setattr(engine_plan, "CHUNK_SAMPLES", 5 * 1100)  # a few inputs per chunk: several chunks
    spec = parse_sweep({"dataset": "insurance", "sigma": [0.5], "n": [1000], "alpha": [0.01], "limit": 20})
    parts = tmp_path / "s" / "sigma=0.5"

    def interrupt(unit, samples):
        if list(parts.rglob("chunk-*.parquet")):
            raise KeyboardInterrupt

    monkeypatch.setattr(engine_pool, "CPU_BATCH", 2048)
    with pytest.raises(KeyboardInterrupt):
        run_sweep(spec, out=tmp_path, sweep_id="s", progress=False, on_unit=interrupt)
    written = sorted(parts.rglob("chunk-*.parquet"))
    monkeypatch.setattr(engine_pool, "CPU_BATCH", 1024)  # "another device": another default batch size
    with pytest.raises(InputError, match=r"was started with batch size 2048 for sigma=0.5, now 1024; choose another "
                                         r"--sweep-id or set the batch size back to 2048"):
        run_sweep(spec, out=tmp_path, sweep_id="s", progress=False)
    assert sorted(parts.rglob("chunk-*.parquet")) == written
    monkeypatch.setattr(engine_pool, "CPU_BATCH", 2048)
    outcome = run_sweep(spec, out=tmp_path, sweep_id="s", progress=False)
    from rpdist.pipelines.sweep import read_sweep

    table = read_sweep(outcome.path).to_pandas()
    assert len(table) == 20 and table["input_id"].is_unique


@pytest.mark.slow
def test_certify_run_refuses_another_batch_size(ray_session, tmp_path):
    from rpdist.pipelines import run as runs
    from rpdist.smoothing.job import CERTIFY, SmoothingConfig

    def spec(batch_size):
        config = SmoothingConfig(CERTIFY, sigma=0.5, n=1000, alpha=0.01, n0=100, batch_size=batch_size)
        return runs.RunSpec(config=config, dataset="insurance", limit=10, out=str(tmp_path), run_id="r")

    runs.execute(spec(512), progress=False)
    with pytest.raises(InputError, match=r"it was started with batch size 512, now 1024; choose another --run-id"):
        runs.execute(spec(1024), progress=False)


@pytest.mark.slow
def test_run_with_explicit_batch_size_refuses_another_device_type(ray_session, tmp_path, monkeypatch, capsys):
    """Same --batch-size, but CPU and CUDA draw noise with different generators: never mixed."""
    from rpdist.pipelines import run as runs

    args = ["certify", "--dataset", "insurance", "--sigma", "0.5", "--n", "1000", "--alpha", "0.01", "--limit", "10",
            "--batch-size", "512", "--out", str(tmp_path), "--run-id", "r", "--quiet"]
    code, _, err = run_cli(args, capsys)
    assert code == 0, err
    manifest = json.loads((tmp_path / "r" / "manifest.json").read_text())
    assert manifest["config"]["engine"]["device"] == "cpu"
    monkeypatch.setattr(runs, "device_type", lambda pool: "cuda")  # as if resumed on a GPU machine
    code, _, err = run_cli(args, capsys)
    assert code == 2 and err.count("\n") == 1
    assert "started with device type 'cpu', now 'cuda'; choose another --run-id or resume on a 'cpu' device" in err


@pytest.mark.slow  # 8-11 s: the full suite runs it, the fast subset stays under a minute
def test_sweep_forward_samples_count_what_was_computed_across_sessions(ray_session, tmp_path, monkeypatch):
    from rpdist.distributed import plan as engine_plan
    from rpdist.pipelines.sweep import parse_sweep, run_sweep

    monkeypatch.setattr(engine_plan, "CHUNK_SAMPLES", 1)  # batch 512: 4 inputs per unit and per chunk, 5 chunks
    spec = parse_sweep({"dataset": "insurance", "sigma": [0.5], "n": [500, 1000], "alpha": [0.01], "limit": 20,
                        "batch_size": 512})
    per_chunk = 4 * (100 + 1000)  # n0 + the largest N: smaller N reuse those samples
    root = tmp_path / "s" / "sigma=0.5"

    def interrupt(unit, samples):
        if list(root.rglob("chunk-*.parquet")):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_sweep(spec, out=tmp_path, sweep_id="s", progress=False, on_unit=interrupt)
    first = sorted(p.name for p in (root / "n=1000" / "alpha=0.01" / "seed=0").glob("chunk-*.parquet"))
    manifest = json.loads((tmp_path / "s" / "manifest.json").read_text())
    assert 1 <= len(first) < 5 and manifest["details"]["forward_samples"]["used"] == len(first) * per_chunk
    # As if killed between the two files of a chunk: one is missing, so that chunk is computed again.
    (root / "n=500" / "alpha=0.01" / "seed=0" / first[0]).unlink()

    resumed = run_sweep(spec, out=tmp_path, sweep_id="s", progress=False).manifest["details"]["forward_samples"]
    assert resumed["used_this_session"] == (5 - len(first) + 1) * per_chunk
    assert resumed["used"] == 6 * per_chunk  # every chunk once, that chunk twice
    assert resumed["naive_grid"] == 20 * ((100 + 500) + (100 + 1000))
    again = run_sweep(spec, out=tmp_path, sweep_id="s", progress=False).manifest["details"]["forward_samples"]
    assert again["used_this_session"] == 0 and again["used"] == resumed["used"]
