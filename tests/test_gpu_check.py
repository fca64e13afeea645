"""scripts/gpu_check.sh end to end on the CPU at tiny sizes: the entry point a GPU machine runs.

Only that it runs and writes its figures is checked; no timing is asserted.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_gpu_check_script_runs_on_cpu(tmp_path, model_cache):
    out = tmp_path / "gpu-check"
    env = {**os.environ, "RPDIST_PYTHON": sys.executable, "RPDIST_CACHE": str(model_cache)}
    # Part 1 (pytest in a subprocess, with Ray) is left out here: the suite runs those tests itself.
    proc = subprocess.run(["bash", str(ROOT / "scripts/gpu_check.sh"), "--device", "cpu", "--quick", "--out", str(out),
                           "--parts", "agreement,throughput", "--route", "in-process"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    payload = json.loads((out / "gpu_check.json").read_text())
    assert payload["ok"] and payload["quick"] and payload["environment"]["device"] == "cpu"
    agreement = payload["agreement"]["models"]["insurance"]
    assert agreement["certify"]["inputs"] == agreement["predict"]["inputs"] == 8
    assert agreement["certify"]["disagree_unexplained"] == 0
    throughput = payload["throughput"]
    assert set(throughput["batches"]) == {"500", "1000"}  # JSON keys
    for batch in throughput["batches"].values():
        assert batch["samples_per_s"]["cert_n500"]["median"] > 0 and batch["ratios"]["cert_vs_naive_n500"]["values"]
    summary = (out / "summary.md").read_text()
    assert "## 2. CPU–device agreement" in summary and "## 3. Throughput" in summary and "**Overall: PASS**" in summary


def test_gpu_check_script_says_why_it_cannot_run(tmp_path):
    """Asked for CUDA with a Python that has no usable torch: a clear message and exit status 2."""
    out = tmp_path / "gpu-check"
    fake = tmp_path / "python-without-torch"
    fake.write_text("#!/bin/sh\nexec env PYTHONPATH=/nonexistent \"" + sys.executable + "\" -S \"$@\"\n")
    fake.chmod(0o755)
    env = {**os.environ, "RPDIST_PYTHON": str(fake)}
    proc = subprocess.run(["bash", str(ROOT / "scripts/gpu_check.sh"), "--device", "cuda", "--out", str(out)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "No interpreter can run the check" in proc.stdout and "RPDIST_PYTHON" in proc.stdout
    assert "not run" in (out / "summary.md").read_text()
