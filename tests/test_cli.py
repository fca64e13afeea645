"""The CLI as a user runs it: Parquet and manifest contents, bad input, resume after interruption.

Most commands run in-process through ``rpdist.cli.main.main`` so they share the session's Ray;
one test runs the installed console script to check the entry point itself.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from scipy.stats import beta, binomtest, norm

from rpdist.cli.main import main


def run_cli(args: list[str], capsys) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    captured = capsys.readouterr()
    return exit_info.value.code, captured.out, captured.err


@pytest.mark.slow
def test_certify_writes_parquet_manifest_and_summary(ray_session, tmp_path, capsys):
    code, out, err = run_cli(["certify", "--dataset", "insurance", "--sigma", "0.5", "--n", "2000", "--n0", "50",
                              "--limit", "30", "--out", str(tmp_path), "--run-id", "r1", "--quiet"], capsys)
    assert code == 0, err
    run = tmp_path / "r1"
    assert sorted(p.name for p in run.iterdir()) == ["certificates.parquet", "manifest.json"]
    df = pq.read_table(run / "certificates.parquet").to_pandas()
    assert list(df.columns) == ["input_id", "label", "prediction", "top_class", "count_top", "counts",
                                "selection_counts", "nonfinite", "n", "n0", "alpha", "sigma", "seed", "pa_lower",
                                "radius", "correct", "advantage_at_radius", "privacy_radius_tau0.05"]
    assert (df["nonfinite"] == 0).all()
    assert len(df) == 30 and df["input_id"].is_unique
    assert all(sum(c) == 2000 for c in df["counts"]) and all(sum(c) == 50 for c in df["selection_counts"])
    # Exactness: every bound and radius re-derived with scipy from the stored counts.
    k = df["count_top"].to_numpy()
    expected_pa = np.where(k > 0, beta.ppf(0.001, np.maximum(k, 1), 2000 - k + 1), 0.0)
    np.testing.assert_allclose(df["pa_lower"], expected_pa, rtol=1e-12, atol=0)
    expected_r = np.where(expected_pa > 0.5, 0.5 * norm.ppf(np.clip(expected_pa, 0.5, 1)), 0.0)
    np.testing.assert_allclose(df["radius"], expected_r, rtol=1e-12, atol=0)
    assert (df.loc[df["prediction"] == -1, "radius"] == 0).all()

    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["status"] == "complete"
    assert manifest["config"]["smoothing"]["sigma"] == 0.5 and manifest["config"]["smoothing"]["n"] == 2000
    assert len(manifest["config"]["model"]["sha256"]) == 64 and len(manifest["config"]["dataset"]["sha256"]) == 64
    assert manifest["versions"]["torch"].startswith("2.13.0") and manifest["versions"]["ray"] == "2.60.0"
    assert manifest["timings"]["samples_per_second"] > 0 and manifest["device"]["type"] == "cpu"
    assert "certified accuracy" in out and "abstain rate" in out and str(run) in out.replace("\n", "")
    ci = binomtest(int(df["correct"].sum()), len(df)).proportion_ci(0.95, method="exact")  # the printed interval
    assert f"{100 * df['correct'].mean():.1f}% [{100 * ci.low:.1f}, {100 * ci.high:.1f}]" in out


@pytest.mark.slow
def test_predict_writes_predictions(ray_session, tmp_path, capsys):
    code, _, err = run_cli(["predict", "--dataset", "digits", "--sigma", "0.25", "--n", "200", "--limit", "12",
                            "--out", str(tmp_path), "--run-id", "p", "--quiet"], capsys)
    assert code == 0, err
    df = pd.read_parquet(tmp_path / "p" / "predictions.parquet")
    assert len(df) == 12 and {"p_value", "count_second"} <= set(df.columns)
    decided = df["prediction"] != -1
    assert (df.loc[decided, "p_value"] <= 0.001).all() and (df.loc[~decided, "p_value"] > 0.001).all()
    assert df["correct"].mean() > 0.7  # the digits CNN is ~98% accurate clean; σ=0.25 costs a little


@pytest.mark.parametrize("args, fragment", [
    (["--sigma", "0"], "sigma must be"),
    (["--sigma", "-1"], "sigma must be"),
    (["--sigma", "0.5", "--alpha", "1.5"], "alpha must"),
    (["--sigma", "0.5", "--alpha", "0"], "alpha must"),
    (["--sigma", "0.5", "--n", "0"], "n must be"),
    (["--sigma", "0.5", "--n0", "0"], "n0 must be"),
    (["--sigma", "0.5", "--n", "9"], "can never certify"),
    (["--sigma", "abc"], "--sigma"),
    (["--sigma", "0.5", "--limit", "0"], "limit"),
    (["--sigma", "0.5", "--split", "validation"], "split"),
])
def test_bad_parameters_exit_2_with_one_line_and_no_output(tmp_path, capsys, args, fragment):
    code, out, err = run_cli(["certify", "--dataset", "insurance", "--out", str(tmp_path / "out"), *args], capsys)
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("rpdist: error:") and fragment in err
    assert "Traceback" not in err + out
    assert not (tmp_path / "out").exists()


def test_bad_files_exit_2(ray_session, tmp_path, capsys):
    nan_csv = tmp_path / "nan.csv"
    pd.DataFrame({"a": [1.0, np.nan, 2.0], "b": [0.0, 1.0, 2.0], "label": [0, 1, 0]}).to_csv(nan_csv, index=False)
    wide = tmp_path / "wide.csv"
    pd.DataFrame({f"x{i}": np.arange(10.0) for i in range(5)} | {"label": [0, 1] * 5}).to_csv(wide, index=False)
    pickled = tmp_path / "pickled.pt"
    import torch

    torch.save(torch.nn.Linear(11, 2), pickled)
    scripted = tmp_path / "linear11.pt"
    torch.jit.save(torch.jit.script(torch.nn.Linear(11, 2)), scripted)
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("x")
    cases = [
        (["--dataset", str(nan_csv), "--model", str(scripted), "--split", "all"], "NaN"),
        (["--dataset", str(wide), "--model", str(scripted), "--split", "all"], "does not accept inputs"),
        (["--dataset", str(tmp_path / "missing.csv")], "missing.csv"),
        (["--dataset", "nope"], "unknown dataset"),
        (["--dataset", "insurance", "--model", str(pickled)], "never unpickles"),
        (["--dataset", "insurance", "--model", str(tmp_path / "missing.pt")], "not found"),
        (["--dataset", "insurance", "--out", str(not_a_dir / "sub")], "cannot write"),
    ]
    for args, fragment in cases:
        out_dir = ["--out", str(tmp_path / "o")] if "--out" not in args else []
        code, out, err = run_cli(["certify", "--sigma", "0.5", "--n", "100", *out_dir, *args, "--quiet"], capsys)
        assert code == 2, (args, err)
        assert err.count("\n") == 1 and fragment in err, (args, err)
        assert not (tmp_path / "o").exists()


@pytest.mark.slow
def test_interrupted_run_resumes_without_duplicates(ray_session, tmp_path, monkeypatch, capsys):
    from rpdist.distributed import plan as engine_plan
    from rpdist.pipelines import run as runs
    from rpdist.smoothing.job import CERTIFY, SmoothingConfig

    monkeypatch.setattr(engine_plan, "CHUNK_SAMPLES", 20 * 1100)  # 20 inputs per chunk → 4 chunks for 80 inputs
    config = SmoothingConfig(CERTIFY, sigma=0.5, n=1000, alpha=0.001, n0=100, batch_size=512)
    spec = runs.RunSpec(config=config, dataset="insurance", limit=80, out=str(tmp_path), run_id="resume")

    parts_dir = tmp_path / "resume" / "parts"

    def interrupt(unit, samples):
        """Stop as a Ctrl-C would, as soon as the first chunk is on disk (the others are in flight)."""
        if any(parts_dir.glob("chunk-*.parquet")):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        runs.execute(spec, progress=False, on_unit=interrupt)
    parts = sorted(parts_dir.glob("chunk-*.parquet"))
    assert 1 <= len(parts) < 4, "the interruption should leave some, not all, chunks"
    assert not (tmp_path / "resume" / "certificates.parquet").exists()

    resumed = runs.execute(spec, progress=False)
    assert resumed.resumed_chunks == len(parts)
    fresh = runs.execute(runs.RunSpec(config=config, dataset="insurance", limit=80, out=str(tmp_path),
                                      run_id="fresh"), progress=False)
    a, b = resumed.table(), fresh.table()
    assert a["input_id"].is_unique and len(a) == 80
    pd.testing.assert_frame_equal(a, b)
    assert not (tmp_path / "resume" / "parts").exists()

    # A finished run is not redone, and a different configuration under the same id is refused.
    again = runs.execute(spec, progress=False)
    assert again.resumed_chunks == 0 and again.table().equals(resumed.table())
    code, _, err = run_cli(["certify", "--dataset", "insurance", "--sigma", "0.25", "--n", "1000", "--limit", "80",
                            "--out", str(tmp_path), "--run-id", "resume", "--quiet"], capsys)
    assert code == 2 and "different configuration" in err


@pytest.mark.slow
def test_console_script_entry_point(tmp_path):
    exe = Path(sys.executable).with_name("rpdist")
    assert exe.exists(), "the package must install the rpdist console command"
    listing = subprocess.run([str(exe), "datasets"], capture_output=True, text=True, timeout=120)
    assert listing.returncode == 0 and "insurance" in listing.stdout and "digits" in listing.stdout
    bad = subprocess.run([str(exe), "certify", "--dataset", "insurance", "--sigma", "-1", "--out", str(tmp_path)],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and bad.stderr.strip().count("\n") == 0 and "Traceback" not in bad.stderr


def test_cli_package_is_not_installed_as_top_level_cli():
    import sysconfig

    import rpdist.cli

    assert Path(rpdist.cli.__file__).parent.name == "cli" and rpdist.cli.__name__ == "rpdist.cli"
    site = Path(sysconfig.get_paths()["purelib"])
    assert not (site / "cli").exists() and not (site / "cli.py").exists()


@pytest.mark.slow
def test_results_through_a_non_local_filesystem(ray_session, tmp_path):
    """The object-store path of the writer (no rename), exercised through a pyarrow filesystem."""
    import pyarrow.fs as pafs

    from rpdist.pipelines import run as runs
    from rpdist.io.store import Store
    from rpdist.smoothing.job import CERTIFY, SmoothingConfig
    from rpdist.pipelines.sweep import parse_sweep, read_sweep, run_sweep

    remote = Store("bucket", filesystem=pafs.SubTreeFileSystem(str(tmp_path), pafs.LocalFileSystem()))
    assert not remote.local
    config = SmoothingConfig(CERTIFY, sigma=0.5, n=500, alpha=0.01, n0=50)
    far = runs.execute(runs.RunSpec(config=config, dataset="insurance", limit=6, out=remote, run_id="r"),
                       progress=False)
    near = runs.execute(runs.RunSpec(config=config, dataset="insurance", limit=6, out=str(tmp_path / "local"),
                                     run_id="r"), progress=False)
    run = tmp_path / "bucket" / "r"
    assert sorted(p.name for p in run.iterdir()) == ["certificates.parquet", "manifest.json"]
    assert pd.read_parquet(run / "certificates.parquet").equals(near.table())
    assert json.loads((run / "manifest.json").read_text())["status"] == "complete"
    assert far.path == "bucket/r"

    spec = parse_sweep({"dataset": "insurance", "sigma": [0.5], "n": [500, 1000], "limit": 4})
    run_sweep(spec, out=remote, sweep_id="s", progress=False)
    local = run_sweep(spec, out=tmp_path / "local", sweep_id="s", progress=False)
    pd.testing.assert_frame_equal(read_sweep(tmp_path / "bucket" / "s").to_pandas(),
                                  read_sweep(local.path).to_pandas())


def test_library_warnings_reach_stderr_as_one_prefixed_line(tmp_path, capsys):
    import torch

    from rpdist.cli.main import configure_logging
    from rpdist.models.zoo import cached_state

    configure_logging()
    configure_logging()  # main() runs it on every call: still one handler, so one line
    path = tmp_path / "model.pt"
    path.write_bytes(b"not a torch file")
    state = cached_state(path, lambda: torch.nn.Linear(2, 2), lambda: torch.nn.Linear(2, 2).state_dict())
    assert set(state) == {"weight", "bias"}
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1
    assert lines[0].startswith(f"rpdist: warning: ignoring unreadable cached model {path}")
