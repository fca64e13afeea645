"""GPU check of rpdist: tests on the device, CPU–device agreement, ResNet-18 throughput, in one go.

Usage (``scripts/gpu_check.sh`` picks the interpreter and calls this)::

    python benchmarks/gpu_check.py [--device cuda] [--quick] [--out DIR] [--parts tests,agreement,throughput]

Writes ``DIR/gpu_check.json`` (every figure), ``DIR/summary.md`` (the tables, also printed) and
``DIR/pytest.log``; ``DIR`` defaults to ``$RPDIST_GPU_CHECK_OUT`` or ``results/gpu-check``.

1. **tests**: the device-sensitive tests (tests/test_on_device.py; with ``--quick`` also
   test_noise_votes.py, else test_noise_votes.py and test_engine.py) with
   ``RPDIST_TEST_DEVICE=<device>``. Ray tests skip where ray is not installed.
2. **agreement**: CERTIFY and PREDICT of the built-in models (insurance MLP, digits CNN,
   σ = 0.5, n0 = 100, N = 10,000, α = 0.001, whole test split) on the CPU and on the device.
   Their noise differs (the CPU and CUDA generators draw other streams), so the runs are two
   independent Monte Carlo estimates of one smoothed classifier, and are compared statistically:

   * *z-test per input*: the estimation counts of the class each input's decision is about are
     independent Binomial(N, p) on both sides if both devices compute the same base classifier;
     z = (k₁ − k₂) / sqrt(2N·p̄(1 − p̄)). ``|z| > 4`` has probability 6e-5 per input: **none is
     allowed**. This is also the "radii within Monte Carlo error" check, since a radius is a
     monotone function of that count. The share with ``|z| > 2`` should be near 4.6%.
   * *decision agreement*: the share of inputs with the same decision (class or abstain). A
     disagreement is **explained** when a class either side decided on lies near the decision
     boundary: its pooled estimate p̄ is within 4 standard errors (sqrt(p̄(1−p̄)/N)) of the
     threshold the decision compares it with (CERTIFY: the least k/N whose Clopper–Pearson bound
     exceeds 1/2; PREDICT: the top class's least share of the top-two votes that the binomial
     test accepts at α). Far from the boundary two honest runs disagree with probability < 1e-4
     per input, so **no unexplained disagreement is allowed**. On the CPU alone (``--device
     cpu``) the second run uses another noise seed, so the same test applies.
3. **throughput**: a CIFAR-size ResNet-18 (random weights, 3×32×32 inputs, 10 classes) on the
   device, for each batch size: certification samples/s of the engine's own work units
   (:class:`~rpdist.smoothing.votes.VoteCounter`, the units :class:`~rpdist.distributed.plan.Plan`
   cuts, n0 = 100) ÷ raw forward samples/s at the same (packed) batch size (**goal ≥ 0.9**), and ÷
   the one-input-at-a-time loop of Cohen et al. at the same batch size (**goal ≥ 10×**), at
   N = 1,000 and N = 10,000. Measurements are interleaved in a rotating order, each bracketed by
   ``torch.cuda.synchronize``; ratios are medians of per-repeat ratios [min–max]. Where Ray is
   installed, one ``certify(workers=1)`` end to end is timed as well.

Exit status: 0 when the tests pass and the agreement criterion holds; 1 otherwise; 2 when the
device is not usable. Throughput goals are reported, never enforced.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import time
import traceback
from pathlib import Path

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

ROOT = Path(__file__).resolve().parents[1]
# The checkout (rpdist, when it is not installed) and this folder (throughput.py: a site-packages
# "benchmarks" package of some dependency shadows ours as a package name).
for _path in (ROOT, ROOT / "benchmarks"):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

from throughput import naive_certify, run_units, summary  # noqa: E402
from rpdist.distributed.plan import PhaseSpec, Plan  # noqa: E402
from rpdist.models.refs import ModelRef  # noqa: E402
from rpdist.smoothing import stats  # noqa: E402
from rpdist.smoothing.noise import DEFAULT_BLOCK, Phase  # noqa: E402
from rpdist.smoothing.votes import VoteCounter  # noqa: E402

SIGMA, N0, ALPHA = 0.5, 100, 0.001
Z_LIMIT = 4.0  # per-input z beyond which a CPU–device difference is not Monte Carlo error
GOAL_RAW, GOAL_NAIVE = 0.9, 10.0

FULL = dict(models=("insurance", "digits"), agree_inputs=None, agree_n=10_000, batch_sizes=(4096, 16384, 32768),
            ns=(1000, 10_000), repeats=3, target_samples=1 << 17, seconds=1.5, width=64, side=32, e2e=True,
            tests=("tests/test_on_device.py", "tests/test_noise_votes.py", "tests/test_engine.py"))
# Quick: a width-4 ResNet-18 on 3×8×8 inputs, so that the whole path runs in seconds on one CPU core.
QUICK = dict(models=("insurance",), agree_inputs=8, agree_n=1000, batch_sizes=(500, 1000), ns=(500,),
             repeats=2, target_samples=500, seconds=None, width=4, side=8, e2e=False,
             tests=("tests/test_on_device.py", "tests/test_noise_votes.py"))


# --------------------------------------------------------------------------------------------
# A compact CIFAR ResNet-18 (He et al. 2016; BasicBlock [2, 2, 2, 2], 3×3 stem, no max-pool)


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class ResNet18(nn.Module):
    """ResNet-18 for 3×32×32 inputs; ``width`` 64 is the standard one (11.2 M parameters)."""

    def __init__(self, num_classes: int = 10, width: int = 64):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU())
        layers, cin = [], width
        for i, stride in enumerate((1, 2, 2, 2)):
            cout = width * 2**i
            layers += [BasicBlock(cin, cout, stride), BasicBlock(cout, cout, 1)]
            cin = cout
        self.layers = nn.Sequential(*layers)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layers(self.stem(x))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


def resnet18_ref(width: int, side: int = 32) -> ModelRef:
    torch.manual_seed(0)
    model = ResNet18(10, width).eval()
    return ModelRef.from_module(model, torch.zeros(1, 3, side, side))


# --------------------------------------------------------------------------------------------
# Environment and device


def sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def environment(device: str) -> dict:
    env = {
        "date_utc": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()),
        "python": platform.python_version(), "executable": sys.executable, "platform": platform.platform(),
        "cpu_count": os.cpu_count(), "torch": torch.__version__, "torch_cuda": torch.version.cuda,
        "cuda_available": torch.cuda.is_available(), "device": device, "torch_threads": torch.get_num_threads(),
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,
        "matmul_allow_tf32": torch.backends.cuda.matmul.allow_tf32,
    }
    try:
        import ray

        env["ray"] = ray.__version__
    except ImportError:
        env["ray"] = None
    try:
        env["git_commit"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                                           text=True, timeout=10).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        env["git_commit"] = None
    if device.startswith("cuda") and torch.cuda.is_available():
        props = torch.cuda.get_device_properties(torch.device(device))
        env.update(gpu=props.name, gpu_memory_gib=round(props.total_memory / 2**30, 1),
                   gpu_capability=f"{props.major}.{props.minor}", gpu_count=torch.cuda.device_count())
    return env


# --------------------------------------------------------------------------------------------
# 1. the device-sensitive tests


def run_tests(device: str, files, out: Path, timeout: float) -> dict:
    cmd = [sys.executable, "-m", "pytest", "-q", "-m", "not slow", "-p", "no:cacheprovider", *files]
    env = {**os.environ, "RPDIST_TEST_DEVICE": device, "PYTHONPATH": os.pathsep.join(
        [str(ROOT)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p])}
    started = time.perf_counter()
    try:
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
        output, code = proc.stdout + proc.stderr, proc.returncode
    except subprocess.TimeoutExpired as exc:
        output = (exc.stdout or b"").decode() if isinstance(exc.stdout, bytes) else (exc.stdout or "")
        output, code = output + f"\n[gpu_check] pytest timed out after {timeout:.0f} s\n", None
    (out / "pytest.log").write_text(output)
    lines = [line for line in output.strip().splitlines() if line.strip()]
    last = next((line.strip("= ") for line in reversed(lines) if " in " in line and ("passed" in line or "failed"
                 in line or "error" in line or "skipped" in line)), lines[-1] if lines else "")
    return {"command": " ".join(["RPDIST_TEST_DEVICE=" + device, "python", *cmd[1:]]), "returncode": code,
            "summary_line": last, "passed": code == 0, "seconds": time.perf_counter() - started}


# --------------------------------------------------------------------------------------------
# 2. CPU–device agreement of decisions


def in_process_counts(ref: ModelRef, X, ids, phases, device: str, seed: int, num_classes: int) -> dict:
    """The engine's plan run on one VoteCounter in this process: what certify() computes, without Ray."""
    from rpdist.distributed.pool import default_batch_size

    plan = Plan(len(X), tuple(PhaseSpec(int(p), n) for p, n in phases), DEFAULT_BLOCK, default_batch_size(device))
    counter = VoteCounter(ref, device)
    totals = {int(p): np.zeros((len(X), num_classes), dtype=np.int64) for p, _ in phases}
    for chunk in range(plan.num_chunks):
        for unit in plan.units(chunk):
            rows = slice(unit.row_start, unit.row_stop)
            counts = counter.count(X[rows], ids[rows], phase=unit.phase, n=unit.n, block_start=unit.block_start,
                                   block_stop=unit.block_stop, sigma=SIGMA, seed=seed, block_size=plan.block_size,
                                   batch_size=plan.batch_size, num_classes=num_classes)
            totals[unit.phase][rows] += counts.sum(axis=1)[:, :num_classes]  # the last slot: non-finite logits
    return totals


def decide(ref, data, n: int, device: str, seed: int, route: str) -> dict:
    """CERTIFY and PREDICT decisions and counts on ``device``, through Ray or in process."""
    X, y, ids = data.X, data.y, data.input_ids
    if route == "ray":
        import rpdist

        common = dict(sigma=SIGMA, alpha=ALPHA, seed=seed, input_ids=ids, device=device)
        cert = rpdist.certify(ref, X, y, n0=N0, n=n, **common)
        pred = rpdist.predict(ref, X, y, n=n, **common)
        matrix = lambda col: np.stack([np.asarray(v, dtype=np.int64) for v in col])  # noqa: E731
        return {"cert_top": cert["top_class"].to_numpy(), "cert_prediction": cert["prediction"].to_numpy(),
                "cert_counts": matrix(cert["counts"]), "radius": cert["radius"].to_numpy(),
                "pred_prediction": pred["prediction"].to_numpy(), "pred_counts": matrix(pred["counts"])}
    c = in_process_counts(ref, X, ids, ((Phase.SELECTION, N0), (Phase.ESTIMATION, n)), device, seed, data.num_classes)
    top, _, _, radius, prediction = stats.certify_decision(c[Phase.SELECTION], c[Phase.ESTIMATION], n, ALPHA, SIGMA)
    p = in_process_counts(ref, X, ids, ((Phase.PREDICT, n),), device, seed, data.num_classes)[Phase.PREDICT]
    return {"cert_top": top, "cert_prediction": prediction, "cert_counts": c[Phase.ESTIMATION], "radius": radius,
            "pred_prediction": stats.predict_decision(p, ALPHA)[4], "pred_counts": p}


def certify_threshold(n: int) -> float:
    """The least share k/N whose Clopper–Pearson lower bound exceeds 1/2: CERTIFY's boundary."""
    lo, hi = n // 2, n
    while lo < hi:
        mid = (lo + hi) // 2
        if stats.cp_lower(mid, n, ALPHA) > 0.5:
            hi = mid
        else:
            lo = mid + 1
    return lo / n


def predict_threshold(m: int) -> float:
    """The least share of the top-two votes, out of m, that the exact binomial test accepts at α."""
    from scipy.stats import binom

    # two-sided p-value of k ≥ m/2 is 2·P[X ≥ k] (symmetric null): find the least k with it ≤ α
    k = np.arange(math.ceil(m / 2), m + 1)
    ok = k[np.minimum(1.0, 2 * binom.sf(k - 1, m, 0.5)) <= ALPHA]
    return (ok[0] / m) if len(ok) else 1.0


def _z(k1, k2, n1, n2):
    pooled = (k1 + k2) / (n1 + n2)
    se = np.sqrt(pooled * (1 - pooled) * (1 / n1 + 1 / n2))
    diff = k1 / n1 - k2 / n2
    return np.where(se > 0, diff / np.where(se > 0, se, 1), 0.0)


def compare(a: dict, b: dict, n: int) -> dict:
    """The statistics of the docstring for one model: CERTIFY and PREDICT, side a vs side b."""
    rows = np.arange(len(a["cert_top"]))
    out = {}
    # CERTIFY: the class decided on is the selection's top class; its estimation counts.
    t = certify_threshold(n)
    za = _z(a["cert_counts"][rows, a["cert_top"]], b["cert_counts"][rows, a["cert_top"]], n, n)
    zb = _z(a["cert_counts"][rows, b["cert_top"]], b["cert_counts"][rows, b["cert_top"]], n, n)
    z = np.maximum(np.abs(za), np.abs(zb))
    same = a["cert_prediction"] == b["cert_prediction"]

    def near(counts_a, counts_b, classes, threshold, m):
        k = (counts_a[rows, classes] + counts_b[rows, classes]) / 2
        p = k / m
        return np.abs(p - threshold) <= Z_LIMIT * np.sqrt(np.maximum(p * (1 - p), 1 / m) / m)

    explained = near(a["cert_counts"], b["cert_counts"], a["cert_top"], t, n) | \
        near(a["cert_counts"], b["cert_counts"], b["cert_top"], t, n)
    both = same & (a["cert_prediction"] != -1)
    dr = np.abs(a["radius"] - b["radius"])[both]
    out["certify"] = {
        "inputs": len(rows), "agree": int(same.sum()), "agree_share": float(same.mean()),
        "disagree": int((~same).sum()), "disagree_near_boundary": int((~same & explained).sum()),
        "disagree_unexplained": int((~same & ~explained).sum()), "threshold_share": t,
        "abstain_a": int((a["cert_prediction"] == -1).sum()), "abstain_b": int((b["cert_prediction"] == -1).sum()),
        "max_abs_z": float(z.max()), "z_over_4": int((z > Z_LIMIT).sum()), "share_z_over_2": float((z > 2).mean()),
        "radius_abs_diff_median": float(np.median(dr)) if len(dr) else None,
        "radius_abs_diff_max": float(dr.max()) if len(dr) else None,
    }
    # PREDICT: share of the top class among the top-two votes, per side's own top two.
    def top_two(counts):
        order = np.argsort(-counts, axis=1, kind="stable")
        return order[:, 0], order[:, 1] if counts.shape[1] > 1 else order[:, 0]

    a1, a2 = top_two(a["pred_counts"])
    b1, b2 = top_two(b["pred_counts"])
    zs = [np.abs(_z(a["pred_counts"][rows, c], b["pred_counts"][rows, c], n, n)) for c in (a1, b1)]
    zp = np.maximum(*zs)
    same_p = a["pred_prediction"] == b["pred_prediction"]
    explained_p = np.zeros(len(rows), dtype=bool)
    for first, second in ((a1, a2), (b1, b2)):
        c1 = (a["pred_counts"][rows, first] + b["pred_counts"][rows, first]) / 2
        c2 = (a["pred_counts"][rows, second] + b["pred_counts"][rows, second]) / 2
        m = np.maximum(c1 + c2, 1)
        q = c1 / m
        thresholds = np.array([predict_threshold(int(round(v))) for v in m])
        explained_p |= np.abs(q - thresholds) <= Z_LIMIT * np.sqrt(np.maximum(q * (1 - q), 1 / m) / m)
    out["predict"] = {
        "inputs": len(rows), "agree": int(same_p.sum()), "agree_share": float(same_p.mean()),
        "disagree": int((~same_p).sum()), "disagree_near_boundary": int((~same_p & explained_p).sum()),
        "disagree_unexplained": int((~same_p & ~explained_p).sum()),
        "abstain_a": int((a["pred_prediction"] == -1).sum()), "abstain_b": int((b["pred_prediction"] == -1).sum()),
        "max_abs_z": float(zp.max()), "z_over_4": int((zp > Z_LIMIT).sum()), "share_z_over_2": float((zp > 2).mean()),
    }
    out["ok"] = all(out[k]["disagree_unexplained"] == 0 and out[k]["z_over_4"] == 0 for k in ("certify", "predict"))
    return out


def run_agreement(device: str, sizes: dict, route: str, log) -> dict:
    from rpdist.datasets.catalog import load_dataset
    from rpdist.models.zoo import default_model

    seed_b = 0 if device != "cpu" else 1  # two CPU runs need two seeds to be independent
    results = {"route": route, "n": sizes["agree_n"], "n0": N0, "sigma": SIGMA, "alpha": ALPHA,
               "side_a": "cpu seed 0", "side_b": f"{device} seed {seed_b}", "models": {}}
    for name in sizes["models"]:
        ref = default_model(name, train_sigma=SIGMA)
        data = load_dataset(name, split="test")
        if sizes["agree_inputs"]:
            data = _head(data, sizes["agree_inputs"])
        timings = {}
        started = time.perf_counter()
        a = decide(ref, data, sizes["agree_n"], "cpu", 0, route)
        timings["cpu_s"] = time.perf_counter() - started
        started = time.perf_counter()
        b = decide(ref, data, sizes["agree_n"], device, seed_b, route)
        timings["device_s"] = time.perf_counter() - started
        results["models"][name] = {**compare(a, b, sizes["agree_n"]), **timings}
        c = results["models"][name]["certify"]
        log(f"agreement {name}: certify agree {c['agree']}/{c['inputs']}, max |z| {c['max_abs_z']:.2f} "
            f"(cpu {timings['cpu_s']:.1f} s, {device} {timings['device_s']:.1f} s)")
    results["ok"] = all(m["ok"] for m in results["models"].values())
    return results


def _head(data, k: int):
    from types import SimpleNamespace

    return SimpleNamespace(X=data.X[:k], y=data.y[:k], input_ids=data.input_ids[:k], num_classes=data.num_classes)


# --------------------------------------------------------------------------------------------
# 3. ResNet-18 throughput: certification vs raw forward vs the naive loop


def run_throughput(device: str, sizes: dict, use_ray: bool, log) -> dict:
    ref = resnet18_ref(sizes["width"], sizes["side"])
    shape = (3, sizes["side"], sizes["side"])
    counter = VoteCounter(ref, device)
    rng = np.random.default_rng(0)
    per_batch = {}
    for batch in sizes["batch_sizes"]:
        packed = max(1, batch // DEFAULT_BLOCK) * DEFAULT_BLOCK  # VoteCounter packs whole noise blocks
        target = sizes["target_samples"]
        if sizes["seconds"]:  # size each measurement to about `seconds` at this device's raw forward rate
            probe = rng.uniform(0, 1, size=(1, *shape)).astype(np.float32)
            samples, seconds = counter.forward_throughput(probe, packed, 2)
            target = int(min(max(packed, samples / seconds * sizes["seconds"]), 1 << 21))
            log(f"throughput batch {batch}: raw forward ≈ {samples / seconds:,.0f} samples/s, "
                f"{target:,} samples per measurement")
        raw_batches = max(1, round(target / packed))
        jobs = {}
        for n in sizes["ns"]:
            k_inputs = max(1, round(target / (N0 + n)))
            X = rng.uniform(0, 1, size=(k_inputs, *shape)).astype(np.float32)
            plan = Plan(k_inputs, (PhaseSpec(Phase.SELECTION, N0), PhaseSpec(Phase.ESTIMATION, n)), DEFAULT_BLOCK, batch)
            units = [u for c in range(plan.num_chunks) for u in plan.units(c)]
            naive_inputs = max(1, round(target / n))
            jobs[n] = (X, np.arange(k_inputs), plan, units, X[:naive_inputs] if naive_inputs <= k_inputs else
                       rng.uniform(0, 1, size=(naive_inputs, *shape)).astype(np.float32))
        x_raw = jobs[sizes["ns"][0]][0]

        def timed(fn):
            sync(device)
            started = time.perf_counter()
            samples = fn()
            sync(device)
            return samples / (time.perf_counter() - started)

        def raw():  # its own timing: forward_throughput runs an untimed warm-up forward first
            samples, seconds = counter.forward_throughput(x_raw, packed, raw_batches)  # noqa: B023 (used within this iteration)
            return samples / seconds

        kinds = {"raw": raw}
        for n, (X, ids, plan, units, Xn) in jobs.items():
            kinds[f"cert_n{n}"] = lambda X=X, ids=ids, plan=plan, units=units: timed(
                lambda: run_units(counter, plan, units, X, ids, 10))
            kinds[f"naive_n{n}"] = lambda Xn=Xn, n=n: timed(lambda: naive_certify(counter.model, Xn, n, batch, device=device))  # noqa: B023
        for fn in kinds.values():  # warm-up: allocator, cuDNN algorithm choice for these shapes
            fn()
        rates = {name: [] for name in kinds}
        names = list(kinds)
        for repeat in range(sizes["repeats"]):
            order = names[repeat % len(names):] + names[: repeat % len(names)]
            for name in (order if repeat % 2 == 0 else order[::-1]):
                rates[name].append(kinds[name]())
            log(f"throughput batch {batch} repeat {repeat + 1}/{sizes['repeats']}: "
                + ", ".join(f"{k} {v[-1]:,.0f}" for k, v in rates.items()) + " samples/s")
        ratios = {}
        for n in sizes["ns"]:
            ratios[f"cert_vs_raw_n{n}"] = summary([c / r for c, r in zip(rates[f"cert_n{n}"], rates["raw"])])
            ratios[f"cert_vs_naive_n{n}"] = summary([c / v for c, v in zip(rates[f"cert_n{n}"], rates[f"naive_n{n}"])])
        per_batch[batch] = {"packed_batch": packed, "target_samples": target,
                            "samples_per_s": {k: summary(v) for k, v in rates.items()}, "ratios": ratios}
    big_n = sizes["ns"][-1]
    best = max(per_batch, key=lambda b: per_batch[b]["samples_per_s"][f"cert_n{big_n}"]["median"])
    result = {"model": f"ResNet-18 (CIFAR stem, width {sizes['width']}, random weights), 3x{sizes['side']}x{sizes['side']}"
                       ", 10 classes",
              "n0": N0, "ns": list(sizes["ns"]), "repeats": sizes["repeats"],
              "batches": per_batch, "best_batch": best}
    if use_ray and sizes["e2e"]:
        try:
            result["end_to_end"] = end_to_end(ref, shape, device, best, per_batch[best], big_n,
                                              per_batch[best]["target_samples"], log)
        except Exception as exc:  # reported, not fatal: the kernel figures stand on their own
            result["end_to_end"] = {"error": f"{type(exc).__name__}: {exc}"}
    return result


def end_to_end(ref, shape, device, batch, measured, n, target, log) -> dict:
    import rpdist

    k = max(2, round(2 * target / (N0 + n)))
    X = np.random.default_rng(1).uniform(0, 1, size=(k, *shape)).astype(np.float32)
    common = dict(sigma=SIGMA, n0=N0, alpha=ALPHA, batch_size=batch, workers=1, device=device)
    rpdist.certify(ref, X[:2], n=DEFAULT_BLOCK, **common)  # pool start-up and warm-up, untimed
    started = time.perf_counter()
    rpdist.certify(ref, X, n=n, **common)
    rate = k * (N0 + n) / (time.perf_counter() - started)
    raw = measured["samples_per_s"]["raw"]["median"]
    log(f"throughput end to end certify(workers=1) batch {batch}: {rate:,.0f} samples/s ({rate / raw:.2f} of raw)")
    return {"inputs": k, "n": n, "batch": batch, "samples_per_s": rate, "vs_in_process_raw": rate / raw}


# --------------------------------------------------------------------------------------------
# Report


def _cell(s: dict | None, fmt="{:.2f}") -> str:
    if not s:
        return "—"
    return f"{fmt.format(s['median'])} [{fmt.format(s['min'])}–{fmt.format(s['max'])}]"


def markdown(payload: dict) -> str:
    env = payload["environment"]
    lines = [f"# rpdist GPU check — {env['date_utc']} UTC", "",
             f"Device `{env['device']}` ({env.get('gpu', 'no GPU')}, {env.get('gpu_memory_gib', '—')} GiB), "
             f"torch {env['torch']} (CUDA {env['torch_cuda']}, cuDNN {env['cudnn']}, cuDNN TF32 "
             f"{env['cudnn_allow_tf32']}), Python {env['python']}, ray {env['ray']}, commit {env['git_commit']}, "
             f"{env['cpu_count']} CPUs; quick={payload['quick']}; {payload['elapsed_s']:.0f} s in all.", ""]
    tests = payload.get("tests")
    if tests:
        lines += ["## 1. Tests on the device", "", f"`{tests['command']}`", "",
                  f"**{'PASS' if tests['passed'] else 'FAIL'}**: {tests['summary_line']} ({tests['seconds']:.0f} s)", ""]
    agreement = payload.get("agreement")
    if agreement and "error" not in agreement:
        lines += ["## 2. CPU–device agreement of decisions", "",
                  f"{agreement['side_a']} vs {agreement['side_b']}, route `{agreement['route']}`, σ={SIGMA}, "
                  f"n0={N0}, N={agreement['n']:,}, α={ALPHA}. Criterion: no input with |z| > {Z_LIMIT:g} and no "
                  "disagreement away from the decision boundary.", "",
                  "| model | analysis | inputs | same decision | disagreements (near boundary / unexplained) | "
                  "abstain cpu / device | max abs z | share abs z > 2 | radius abs diff median / max | ok |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for name, m in agreement["models"].items():
            for analysis in ("certify", "predict"):
                s = m[analysis]
                radius = (f"{s['radius_abs_diff_median']:.4f} / {s['radius_abs_diff_max']:.4f}"
                          if s.get("radius_abs_diff_max") is not None else "—")
                lines.append(f"| {name} | {analysis} | {s['inputs']} | {s['agree_share']:.1%} | {s['disagree']} "
                             f"({s['disagree_near_boundary']} / {s['disagree_unexplained']}) | {s['abstain_a']} / "
                             f"{s['abstain_b']} | {s['max_abs_z']:.2f} | {s['share_z_over_2']:.1%} | {radius} | "
                             f"{'yes' if m['ok'] else '**no**'} |")
        lines.append("")
    elif agreement:
        lines += ["## 2. CPU–device agreement of decisions", "", f"**ERROR**: {agreement['error']}", ""]
    tp = payload.get("throughput")
    if tp and "error" not in tp:
        lines += ["## 3. Throughput", "", f"{tp['model']}; n0={N0}; median of {tp['repeats']} interleaved repeats "
                  f"[min–max]. Goals: certification ÷ raw forward ≥ {GOAL_RAW}, ÷ naive loop ≥ {GOAL_NAIVE:g}×.", "",
                  "| batch (packed) | N | cert ÷ raw forward | cert ÷ naive loop | cert samples/s | raw samples/s | "
                  "naive samples/s |", "|---|---|---|---|---|---|---|"]
        for batch, b in tp["batches"].items():
            for n in tp["ns"]:
                r, s = b["ratios"], b["samples_per_s"]
                lines.append(f"| {batch} ({b['packed_batch']}) | {n:,} | {_cell(r[f'cert_vs_raw_n{n}'])} | "
                             f"{_cell(r[f'cert_vs_naive_n{n}'])} | {s[f'cert_n{n}']['median']:,.0f} | "
                             f"{s['raw']['median']:,.0f} | {s[f'naive_n{n}']['median']:,.0f} |")
        lines += ["", f"Best batch size for certification at N={tp['ns'][-1]:,}: **{tp['best_batch']}**."]
        e2e = tp.get("end_to_end")
        if e2e and "error" not in e2e:
            lines.append(f"End to end `certify(workers=1)` at batch {e2e['batch']}: {e2e['samples_per_s']:,.0f} "
                         f"samples/s, {e2e['vs_in_process_raw']:.2f} of the in-process raw forward.")
        elif e2e:
            lines.append(f"End to end `certify(workers=1)`: {e2e['error']}")
        lines.append("")
    elif tp:
        lines += ["## 3. Throughput", "", f"**ERROR**: {tp['error']}", ""]
    lines.append(f"**Overall: {'PASS' if payload['ok'] else 'FAIL'}** (tests and agreement; throughput goals are "
                 "reported, not enforced)")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default=os.environ.get("RPDIST_GPU_CHECK_DEVICE", "cuda"))
    parser.add_argument("--quick", action="store_true", default=os.environ.get("RPDIST_GPU_CHECK_QUICK") == "1",
                        help="tiny sizes (for the CPU test of this script)")
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("RPDIST_GPU_CHECK_OUT") or ROOT / "results/gpu-check"))
    parser.add_argument("--parts", default="tests,agreement,throughput")
    parser.add_argument("--route", choices=("auto", "ray", "in-process"), default="auto",
                        help="agreement through rpdist.certify on Ray, or the same plan in this process (auto: Ray "
                             "where it is installed)")
    parser.add_argument("--batch-sizes", help="comma-separated throughput batch sizes")
    parser.add_argument("--tests-timeout", type=float, default=300)
    args = parser.parse_args(argv)
    sizes = dict(QUICK if args.quick else FULL)
    if args.batch_sizes:
        sizes["batch_sizes"] = tuple(int(b) for b in args.batch_sizes.split(","))
    parts = {p.strip() for p in args.parts.split(",") if p.strip()}
    args.out.mkdir(parents=True, exist_ok=True)
    if args.quick and args.device == "cpu":
        torch.set_num_threads(1)  # tiny sizes: one thread, polite on a shared machine
    started = time.perf_counter()

    def log(message: str) -> None:
        print(f"[gpu_check {time.perf_counter() - started:6.1f} s] {message}", file=sys.stderr, flush=True)

    env = environment(args.device)
    log(f"torch {env['torch']} (CUDA {env['torch_cuda']}), device {args.device} {env.get('gpu', '')}, ray {env['ray']}")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        log(f"torch {torch.__version__} at {sys.executable} sees no CUDA device: see scripts/gpu_check.sh")
        (args.out / "gpu_check.json").write_text(json.dumps({"environment": env, "ok": False,
                                                              "error": "no CUDA device visible to torch"}, indent=2))
        return 2
    route = args.route if args.route != "auto" else ("ray" if env["ray"] else "in-process")
    payload: dict = {"environment": env, "quick": args.quick, "sizes": {k: list(v) if isinstance(v, tuple) else v
                                                                        for k, v in sizes.items()}}

    def guarded(name, fn):
        try:
            payload[name] = fn()
        except Exception as exc:
            traceback.print_exc()
            payload[name] = {"error": f"{type(exc).__name__}: {exc}"}
        (args.out / "gpu_check.json").write_text(json.dumps(payload, indent=2, default=str))  # partial results

    if "tests" in parts:
        log("1. tests on the device")
        guarded("tests", lambda: run_tests(args.device, sizes["tests"], args.out, args.tests_timeout))
        log(f"tests: {payload['tests'].get('summary_line', payload['tests'].get('error'))}")
    try:
        if "agreement" in parts:
            log(f"2. CPU–{args.device} agreement ({route})")
            guarded("agreement", lambda: run_agreement(args.device, sizes, route, log))
        if "throughput" in parts:
            log("3. ResNet-18 throughput")
            guarded("throughput", lambda: run_throughput(args.device, sizes, route == "ray", log))
    finally:
        if route == "ray" and ("agreement" in parts or "throughput" in parts):
            from rpdist.distributed import pool as engine_pool

            engine_pool.shutdown()
    payload["elapsed_s"] = time.perf_counter() - started
    payload["ok"] = (payload.get("tests", {}).get("passed", True) is not False and "error" not in payload.get("tests", {})
                     and payload.get("agreement", {}).get("ok", True) is not False
                     and "error" not in payload.get("agreement", {}) and "error" not in payload.get("throughput", {}))
    (args.out / "gpu_check.json").write_text(json.dumps(payload, indent=2, default=str))
    text = markdown(payload)
    (args.out / "summary.md").write_text(text)
    print(text)
    log(f"wrote {args.out / 'gpu_check.json'} and {args.out / 'summary.md'}")
    return 0 if payload["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
