"""``rpdist report``: markdown and PNGs from hand-made run, sweep, RAP and attack files (no Ray)."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from rpdist.cli.main import main
from rpdist.errors import InputError
from rpdist.reporting.format import pct_interval, with_interval
from rpdist.reporting.report import model_sets, write_report
from rpdist.smoothing.job import SmoothingConfig, certificate_table, prediction_table
from rpdist.pipelines.sweep import partition_dir


def certificates(sigma: float, n: int, alpha: float, inputs: int = 40, seed: int = 0, classes: int = 3) -> pa.Table:
    """A certificates table from made-up counts: a mix of confident, borderline, wrong and abstaining inputs."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, inputs)
    top_share = rng.uniform(0.3, 1.0, inputs)
    counts = np.zeros((inputs, classes), dtype=np.int64)
    selection = np.zeros((inputs, classes), dtype=np.int64)
    for i in range(inputs):
        top = labels[i] if i % 5 else (labels[i] + 1) % classes  # every fifth input predicts the wrong class
        counts[i, top] = int(top_share[i] * n)
        counts[i, (top + 1) % classes] = n - counts[i, top]
        selection[i, top] = 100
    config = SmoothingConfig("certify", sigma, n, alpha, 100, 0)
    return certificate_table(np.arange(inputs), labels, selection, counts, config)


def rate_cell(hits) -> str:
    """A rate and its exact 95% interval, computed here with scipy rather than rpdist.smoothing.stats."""
    from scipy.stats import binomtest

    hits = np.asarray(hits, dtype=bool)
    ci = binomtest(int(hits.sum()), hits.size).proportion_ci(0.95, method="exact")
    return f"{100 * hits.mean():.1f}% [{100 * ci.low:.1f}, {100 * ci.high:.1f}]"


def test_with_interval_reads_value_and_bounds_from_one_record():
    """The one formatter behind the audit, RAP and extraction interval columns: value, bounds, sign and the
    two missing cases."""
    record = {"gap": -0.0512, "gap_low": -0.0934, "gap_high": 0.0021, "bare": 1.5, "none": float("nan")}
    assert with_interval(record, "gap") == "-0.051 [-0.093, 0.002]"
    assert with_interval(record, "gap", digits=2, sign="+") == "-0.05 [-0.09, +0.00]"
    assert with_interval(record, "bare") == "1.500"  # no bounds recorded: the bare value
    assert with_interval(record, "none") == "—" and with_interval(record, "absent") == "—"


def test_pct_interval_is_the_one_rate_style():
    """Every rate with its interval (certify/predict, attack CLI and report, utility) prints "value [low, high]";
    whole percents where 50 attacks make decimals noise, and the bare rate when a table recorded no bounds."""
    assert pct_interval(0.92, (0.8077, 0.9778)) == "92.0% [80.8, 97.8]"
    assert pct_interval(0.92, (0.8077, 0.9778), digits=0) == "92% [81, 98]"
    assert pct_interval(0.831, (float("nan"), float("nan")), missing="—") == "83.1%"
    assert pct_interval(0.831, None) == "83.1%"
    assert pct_interval(float("nan"), (0.1, 0.2), missing="—") == "—"


def write_certify_run(root: Path, run_id: str = "run", sigma: float = 0.5, n: int = 1000, alpha: float = 0.001,
                      dataset: str = "insurance", model_sha256: str = "cd" * 32) -> tuple[Path, pd.DataFrame]:
    run = root / run_id
    run.mkdir(parents=True)
    table = certificates(sigma, n, alpha)
    pq.write_table(table, run / "certificates.parquet")
    manifest = {"status": "complete", "command": ["rpdist", "certify", "--sigma", str(sigma)],
                "config": {"analysis": "certify",
                           "smoothing": {"analysis": "certify", "sigma": sigma, "n": n, "n0": 100, "alpha": alpha,
                                         "seed": 0, "batch_size": 4096, "noise_block": 1000},
                           "dataset": {"spec": dataset, "split": "test", "rows": 40, "sha256": "ab" * 32},
                           "model": {"source": "default", "sha256": model_sha256}},
                "device": {"type": "cpu", "workers": 2}, "versions": {"rpdist": "0.1.0"},
                "timings": {"started": "2026-01-01T00:00:00", "samples_per_second": 123456.7}}
    (run / "manifest.json").write_text(json.dumps(manifest))
    return run, table.to_pandas()


def write_sweep(root: Path, sigmas=(0.25, 0.5), ns=(1000, 10000), alphas=(0.01, 0.001)) -> tuple[Path, pd.DataFrame]:
    """The hive layout of ``rpdist sweep`` by hand: partition columns only in the directory names."""
    frames = []
    for s_i, sigma in enumerate(sigmas):
        for n in ns:
            for alpha in alphas:
                table = certificates(sigma, n, alpha, seed=s_i)
                directory = root.joinpath(*partition_dir(sigma, n, alpha, 0))
                directory.mkdir(parents=True)
                pq.write_table(table.drop_columns(["sigma", "n", "alpha", "seed"]), directory / "chunk-000000.parquet")
                frames.append(table.to_pandas())
    manifest = {"status": "complete",
                "config": {"sweep": {"dataset": "insurance", "analysis": "certify", "sigma": list(sigmas),
                                     "n": list(ns), "alpha": list(alphas), "seed": [0], "n0": 100}, "rows": 40},
                "details": {"forward_samples": {"used": 123_000, "naive_grid": 456_000, "saved_fraction": 1 - 123 / 456}}}
    (root / "manifest.json").write_text(json.dumps(manifest))
    return root, pd.concat(frames, ignore_index=True)


def rap_frame(inputs: int = 30) -> pd.DataFrame:
    rng = np.random.default_rng(1)
    rows = []
    for i in range(inputs):
        value = float(rng.uniform(18, 45))
        for release, length in (("base", rng.uniform(5, 20)), ("smoothed", rng.uniform(15, 30))):
            radius = float(rng.uniform(0, 0.5)) if release == "smoothed" else float("nan")
            rows.append({"input_id": i, "release_model": release, "sigma": 0.5, "n": 1000, "alpha": 0.001,
                         "attribute": "bmi", "attribute_value": value, "attribute_scale": 6.1,
                         "released_label": int(i % 7 == 0) - (release == "smoothed" and i % 10 == 3),
                         "compatible_length": float(length), "interval_low": value - length / 2,
                         "interval_high": value + length / 2, "radius": radius,
                         "certified_low": value - radius * 6.1 if release == "smoothed" and i % 4 else float("nan"),
                         "certified_high": value + radius * 6.1 if release == "smoothed" and i % 4 else float("nan"),
                         "adversary_estimate": value + 1.5, "abs_error": 1.5, "label": i % 2,
                         "correct": bool(i % 3), "grid_step": 0.5, "grid_points": 60})
    return pd.DataFrame(rows)


def attack_frame() -> pd.DataFrame:
    rows = []
    settings = [("none", np.nan, np.nan, np.nan, 0.9, 0.75), ("rp", 0.1, 1000, np.nan, 0.7, 0.05),
                ("rp", 0.05, 1000, np.nan, 0.88, 0.5), ("dpsgd", np.nan, np.nan, 8.0, 0.6, 0.25)]
    for defense, sigma, n, eps, acc, asr in settings:
        for target in range(20):
            rows.append({"defense": defense, "sigma": sigma, "n": n, "epsilon": eps, "release": "label",
                         "target": target, "success": target < round(asr * 20), "eval_confidence": 0.8,
                         "queries": 500, "forward_passes": 1000, "utility_accuracy": acc})
    return pd.DataFrame(rows)


def check_png(path: Path) -> None:
    import matplotlib.image as mpimg

    assert path.is_file() and path.stat().st_size > 5_000
    image = mpimg.imread(path)
    height, width = image.shape[:2]
    assert 300 <= height <= 2000 and 500 <= width <= 2500, image.shape
    assert image.std() > 0.05  # not a blank canvas


def pngs_of(report: Path) -> list[Path]:
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", report.read_text())
    assert links and all("/" not in link for link in links)  # relative links, next to the report
    paths = [report.parent / link for link in links]
    for path in paths:
        check_png(path)
    return paths


def run_cli(args: list[str], capsys) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as info:
        main(args)
    captured = capsys.readouterr()
    return info.value.code, captured.out, captured.err


def test_certify_run_report_numbers_and_plot(tmp_path, capsys):
    run, df = write_certify_run(tmp_path)
    code, out, err = run_cli(["report", str(run)], capsys)
    assert code == 0, err
    report = run / "report.md"
    assert str(report) in out
    text = report.read_text()
    assert [p.name for p in pngs_of(report)] == ["report-certified-accuracy.png"]
    # Certified accuracy, computed here independently of rpdist.analyses.smoothing.
    correct = (df["prediction"] == df["label"]).to_numpy()
    assert f"| smoothed accuracy (certified at radius ≥ 0) | {rate_cell(correct)} |" in text
    for multiple in (0.25, 0.5, 1.0, 2.0):
        r = multiple * 0.5
        expected = rate_cell(correct & (df["radius"].to_numpy() >= r))
        assert f"| certified accuracy at radius ≥ {r:g} ({multiple:g}σ) | {expected} |" in text, (r, expected)
    assert f"| abstain rate | {rate_cell(df['prediction'] == -1)} |" in text
    assert "95% Clopper–Pearson intervals over the inputs" in text
    assert f"| mean radius (abstain = 0) | {df['radius'].mean():.4f} |" in text
    assert "123,457" in text  # samples/s from the manifest
    assert "standardised units" in text and "| smoothing.sigma | 0.5 |" in text
    assert "Robust attribute privacy" not in text and "Attack benchmark" not in text
    assert 0 < (df["prediction"] == -1).sum() < len(df) and 0 < correct.sum() < len(df)  # a non-trivial fixture
    assert not [p for p in run.iterdir() if p.name.startswith(".")]  # no temporary files left behind

    code, out, err = run_cli(["report", str(run), "--out", str(tmp_path / "docs" / "cert.md")], capsys)
    assert code == 0, err
    assert [p.name for p in pngs_of(tmp_path / "docs" / "cert.md")] == ["cert-certified-accuracy.png"]


@pytest.mark.slow
def test_sweep_report_tables_and_plots(tmp_path):
    root, df = write_sweep(tmp_path / "sw")
    out = tmp_path / "elsewhere" / "sweep.md"
    assert write_report(root, out=out) == out
    text = out.read_text()
    names = sorted(p.name for p in pngs_of(out))
    assert names == ["sweep-certified-accuracy.png", "sweep-versus-n.png"]
    assert not (root / "report.md").exists()
    for (sigma, n, alpha), part in df.groupby(["sigma", "n", "alpha"]):
        correct = (part["prediction"] == part["label"]).to_numpy()
        cells = [rate_cell(correct & (part['radius'].to_numpy() >= m * sigma)) for m in (0.0, 0.25, 0.5, 1.0, 2.0)]
        row = (f"| {sigma:g} | {n:,} | {alpha:g} | 0 | 40 | " + " | ".join(cells)
               + f" | {rate_cell(part['prediction'] == -1)} | {part['radius'].mean():.4f} |")
        assert row in text, row
    assert "123,000 used" in text and "456,000" in text
    assert "largest N (10,000) and smallest α (0.001)" in text


def test_sweep_with_one_n_has_no_versus_n_plot(tmp_path):
    root, _ = write_sweep(tmp_path / "sw", sigmas=(0.5,), ns=(1000,), alphas=(0.001,))
    report = write_report(root)
    assert [p.name for p in pngs_of(report)] == ["report-certified-accuracy.png"]
    assert "single N" in report.read_text()


def test_predict_run_report(tmp_path):
    run = tmp_path / "pred"
    run.mkdir()
    counts = np.array([[90, 10], [50, 50], [5, 95], [60, 40]])
    table = prediction_table(np.arange(4), np.array([0, 0, 0, 1]), counts, SmoothingConfig("predict", 0.5, 100, 0.01))
    pq.write_table(table, run / "predictions.parquet")
    text = write_report(run).read_text()
    df = table.to_pandas()
    assert f"| accuracy (abstain = wrong) | {rate_cell(df['prediction'] == df['label'])} |" in text
    assert "No `manifest.json`" in text and "![" not in text


def test_rap_and_attack_sections_appear_with_their_files(tmp_path):
    run, _ = write_certify_run(tmp_path)
    rap = rap_frame()
    pq.write_table(pa.Table.from_pandas(rap, preserve_index=False), run / "rap.parquet")
    report = write_report(run)
    text = report.read_text()
    assert "Robust attribute privacy" in text and "Attack benchmark" not in text
    assert sorted(p.name for p in pngs_of(report)) == ["report-certified-accuracy.png", "report-rap-lengths.png"]
    for release in ("base", "smoothed"):
        median = rap.loc[rap["release_model"] == release, "compatible_length"].median()
        assert re.search(rf"\| {release} \| 30 \| [^\n]*\| {median:.2f} \[[0-9.]+, [0-9.]+\] \|", text), release
    smoothed = rap[rap["release_model"] == "smoothed"]
    assert f"| {100 * smoothed['certified_low'].notna().mean():.1f}% |" in text

    attack = attack_frame()
    pq.write_table(pa.Table.from_pandas(attack, preserve_index=False), run / "attack.parquet")
    report = write_report(run)
    text = report.read_text()
    assert "Robust attribute privacy" in text and "Attack benchmark" in text
    assert "report-attack-asr.png" in [p.name for p in pngs_of(report)]
    # ASR with its 95% Clopper–Pearson interval over the 20 targets (scipy: binomtest(1, 20) etc.)
    # (one restart per target: the paper protocol judges the same 20 attacks; no start verdicts: no difference)
    assert "| rp | 0.1 | 1,000 | — | label | 20 | 5.0% [0.1, 24.9] | n/a | — | 5.0% [0.1, 24.9] | 70.0% |" in text
    assert "| none | — | — | — | label | 20 | 75.0% [50.9, 91.3] | n/a | — | 75.0% [50.9, 91.3] | 90.0% |" in text
    assert "| dpsgd | — | — | 8 | label | 20 | 25.0% [8.7, 49.1] | n/a | — | 25.0% [8.7, 49.1] | 60.0% |" in text


def test_attack_only_directory(tmp_path):
    run = tmp_path / "atk"
    run.mkdir()
    pq.write_table(pa.Table.from_pandas(attack_frame(), preserve_index=False), run / "attack.parquet")
    text = write_report(run).read_text()
    assert "Attack benchmark" in text and "Certified robustness" not in text


@pytest.mark.slow
def test_folder_of_runs(tmp_path):
    write_certify_run(tmp_path, "a", sigma=0.25)
    write_certify_run(tmp_path, "b", sigma=0.5, dataset="digits")
    write_sweep(tmp_path / "sw", sigmas=(0.5,))
    (tmp_path / "unfinished").mkdir()
    (tmp_path / "unfinished" / "manifest.json").write_text(json.dumps({"status": "running"}))
    report = write_report(tmp_path)
    text = report.read_text()
    names = {p.name for p in pngs_of(report)}
    assert {"report-all-certified-accuracy.png", "report-a-certified-accuracy.png", "report-b-certified-accuracy.png",
            "report-sw-certified-accuracy.png", "report-sw-versus-n.png"} == names
    assert "| `a` | certify | 40 | 0.25 | 1,000 | 0.001 | — | model cdcdcdcd |" in text  # no time recorded
    assert "unfinished" in text and "Skipped" in text
    assert "different sets of models" not in text  # one model behind every result
    write_certify_run(tmp_path, "c", sigma=0.5, model_sha256="ef" * 32)  # the same recipe, retrained elsewhere
    text = write_report(tmp_path).read_text()
    assert "| `c` | certify | 40 | 0.5 | 1,000 | 0.001 | — | model efefefef |" in text
    assert "**These results come from 2 different sets of models**" in text


def test_folder_table_gives_each_result_its_recorded_time_and_the_sum(tmp_path):
    def manifest(seconds):
        return json.dumps({"status": "complete", "timings": {"seconds": seconds}})

    for name, seconds in (("first", 3000.4), ("second", 44.0)):
        run = tmp_path / name
        run.mkdir()
        pq.write_table(pa.Table.from_pandas(attack_frame(), preserve_index=False), run / "attack.parquet")
        (run / "manifest.json").write_text(manifest(seconds))
    points = attack_frame().query("defense == 'rp'")
    for sigma, seconds in ((0.1, 1800.0), (0.05, 2700.0)):  # a sweep: each point records its own time
        point = tmp_path.joinpath("sw", *partition_dir(sigma, 1000, 0.001, 0))
        point.mkdir(parents=True)
        table = pa.Table.from_pandas(points[points.sigma == sigma], preserve_index=False)
        pq.write_table(table, point / "attack.parquet")
        (point / "manifest.json").write_text(manifest(seconds))
    (tmp_path / "sw" / "manifest.json").write_text(json.dumps({"status": "complete", "timings": {}}))
    write_certify_run(tmp_path, "untimed")
    for name, resumed in (("whole", 0), ("resumed", 3)):  # a resumed certify run times only its last session
        run, _ = write_certify_run(tmp_path, name)
        recorded = json.loads((run / "manifest.json").read_text())
        recorded["timings"].update(seconds_this_session=90.0, resumed_chunks=resumed)
        (run / "manifest.json").write_text(json.dumps(recorded))
    text = write_report(tmp_path).read_text()
    rows = {line.split("|")[1].strip(): line.split("|")[7].strip() for line in text.splitlines()
            if line.startswith("| `")}
    assert rows == {"`first`": "50 min", "`second`": "44 s", "`sw`": "1 h 15 min", "`untimed`": "—",
                    "`whole`": "2 min", "`resumed`": "—"}
    assert "Time the manifests record: 2 h 07 min for 4 of 6 results" in text  # 7,634.4 s


def test_per_point_sweep_names_its_unfinished_points(tmp_path):
    """A half-finished attack sweep is reported from its finished points, and the report says which are missing."""
    points = attack_frame().query("defense == 'rp'")
    done = tmp_path.joinpath("sw", *partition_dir(0.1, 1000, 0.001, 0))
    done.mkdir(parents=True)
    pq.write_table(pa.Table.from_pandas(points[points.sigma == 0.1], preserve_index=False), done / "attack.parquet")
    (done / "manifest.json").write_text(json.dumps({"status": "complete"}))
    running = tmp_path.joinpath("sw", *partition_dir(0.05, 1000, 0.001, 0))
    (running / "parts").mkdir(parents=True)  # classes saved so far; no attack.parquet yet
    for chunk in (0, 1):
        (running / "parts" / f"chunk-{chunk:06d}.parquet").write_bytes(b"")  # counted, never read
    (running / "manifest.json").write_text(json.dumps({"status": "running"}))
    for directory in (tmp_path / "sw", tmp_path):  # the sweep itself, or the folder holding it
        text = write_report(directory).read_text()
        assert f"Skipped: {running} holds an unfinished run (status running, 2 chunks saved, no final table" in text
        assert str(done) not in text.split("Skipped:")[1].split("\n")[0]
    shutil.copytree(running, tmp_path.joinpath("begun", *partition_dir(0.05, 1000, 0.001, 0)))
    (tmp_path / "begun" / "manifest.json").write_text(json.dumps({"status": "running"}))  # a sweep with no point done
    text = write_report(tmp_path).read_text()
    assert f"Skipped: {tmp_path / 'begun'} holds an unfinished run (status running, 2 chunks saved" in text


def _make(path: Path, files: dict[str, str]) -> Path:
    path.mkdir()
    for name, content in files.items():
        (path / name).write_text(content)
    return path


@pytest.mark.parametrize("setup, fragment", [
    (lambda p: p / "missing", "does not exist"),
    (lambda p: _make(p / "empty", {}), "is empty"),
    (lambda p: _make(p / "junk", {"notes.txt": "x"}), "holds no rpdist"),
    (lambda p: _make(p / "d", {"f.txt": "x"}) / "f.txt", "not a directory"),
    (lambda p: _make(p / "r", {"certificates.parquet": "nope"}), "cannot read"),
    (lambda p: _make(p / "r", {"manifest.json": '{"status": "running"}'}), "unfinished run"),
    (lambda p: _make(p / "r", {"manifest.json": "{not json"}), "not valid JSON"),
])
def test_bad_directories_exit_2_with_one_line(tmp_path, capsys, setup, fragment):
    target = setup(tmp_path)
    code, out, err = run_cli(["report", str(target)], capsys)
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("rpdist: error:") and fragment in err, err
    assert "Traceback" not in err
    assert not list(tmp_path.rglob("*.png")) and not list(tmp_path.rglob("report.md"))


def test_empty_table_and_missing_column_are_input_errors(tmp_path):
    run = tmp_path / "r"
    run.mkdir()
    pq.write_table(certificates(0.5, 1000, 0.001).slice(0, 0), run / "certificates.parquet")
    with pytest.raises(InputError, match="no rows"):
        write_report(run)
    (run / "certificates.parquet").unlink()
    pq.write_table(pa.table({"release_model": ["base"]}), tmp_path / "r" / "rap.parquet")
    with pytest.raises(InputError, match="compatible_length"):
        write_report(run)


def test_privacy_utility_lines_never_join_two_nudges_or_attackers():
    """One line per defense and fixed other settings: the noise baseline at two nudges is two lines, each
    through its own σ points, and rp's plain and abstain-aware attackers are two lines."""
    from rpdist.analyses.attack import privacy_utility

    rows = [dict(defense="noise", sigma=s, nudge=d, attacker="plain", asr=a, utility_accuracy=u)
            for d, pts in (("ulp", ((0.5, 0.6, 0.9), (1.0, 0.4, 0.6))), ("0.1", ((0.5, 0.7, 0.9), (1.0, 0.5, 0.6))))
            for s, a, u in pts]
    rows += [dict(defense="rp", sigma=1.0, nudge="0", attacker=a, asr=r, utility_accuracy=0.7)
             for a, r in (("plain", 0.4), ("aware", 0.6))]
    fig = privacy_utility(pd.DataFrame(rows))
    lines = {line.get_label(): sorted(zip(line.get_xdata(), line.get_ydata())) for line in fig.axes[0].get_lines()}
    assert lines == {"noise (δ/σ=0.1)": [(60.0, 50.0), (90.0, 70.0)],
                     "noise (δ/σ=ulp)": [(60.0, 40.0), (90.0, 60.0)],
                     "rp (attacker=aware)": [(70.0, 60.0)], "rp": [(70.0, 40.0)]}


def test_model_sets_count_only_models_that_differ():
    """A manifest that records one more model (the attacker's prior, a DP-SGD target) is the same set of models
    as one that does not, where every model both record agrees; a different hash for any shared name is another."""
    c = {"eval": "f6c2a5f9", "target": "81b51723"}
    c_later = {**c, "generator": "32d18189"}
    c_dpsgd = {**c_later, "dpsgd eps=1": "7a1c9861"}
    a = {"eval": "34711215", "target": "fd3f9157"}
    assert model_sets([c, c_later, c_dpsgd, {}]) == 1
    assert model_sets([c, c_later, a, c_dpsgd]) == 2
    assert model_sets([c_later, {**c, "generator": "00000000"}]) == 2  # the same classifiers, another prior
    assert model_sets([{"model": "cdcdcdcd"}, {"model": "efefefef"}, {"model": "cdcdcdcd"}]) == 2
