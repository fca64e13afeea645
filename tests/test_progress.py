"""SampleProgress away from a terminal: a log file gets plain lines as the work goes, not one bar at the end."""

import io

from rich.console import Console

from rpdist.reporting.progress import SampleProgress


def _log() -> Console:
    return Console(file=io.StringIO(), force_terminal=False, width=80)


def test_a_log_gets_one_line_per_interval_with_count_share_and_rate_then_a_closing_line():
    console = _log()
    meter = SampleProgress(1000, "attack σ=1.0", True, unit="queries", console=console, log_every=0.0)
    meter.advance(400)
    meter.advance(599)
    meter.close()
    lines = console.file.getvalue().splitlines()
    assert len(lines) == 3
    assert lines[0].startswith("attack σ=1.0: 400/1,000 queries (40%), ") and lines[0].endswith(" left")
    assert lines[1].startswith("attack σ=1.0: 999/1,000 queries (99%), ")  # rounded down: not done yet
    assert lines[2].startswith("attack σ=1.0: 999/1,000 queries in ") and lines[2].endswith("/s")
    meter.close()  # closing twice prints nothing more
    assert len(console.file.getvalue().splitlines()) == 3


def test_between_intervals_the_log_stays_quiet_and_a_disabled_meter_prints_nothing():
    console = _log()
    meter = SampleProgress(10_000, "certify σ=0.5", True, console=console, log_every=3600.0)
    for _ in range(10):
        meter.advance(1000)
    meter.close()
    [line] = console.file.getvalue().splitlines()
    assert line.startswith("certify σ=0.5: 10,000/10,000 samples in ")
    quiet = _log()
    silent = SampleProgress(10, "x", False, console=quiet, log_every=0.0)
    silent.advance(10)
    silent.close()
    assert quiet.file.getvalue() == "" and silent.done == 10


def test_a_terminal_gets_the_bar_not_the_log_lines():
    console = Console(file=io.StringIO(), force_terminal=True, width=80)
    meter = SampleProgress(100, "walks", True, unit="queries", console=console, log_every=0.0)
    meter.advance(100)
    meter.close()
    out = console.file.getvalue()
    assert "100/100 queries" in out and "walks: " not in out  # the bar's columns, not a log line


def test_training_in_a_log_reports_epochs_on_stderr_and_a_slow_rate_keeps_two_digits(capsys):
    import numpy as np

    from rpdist.models.zoo import fit_classifier

    rec = {"arch": "mlp", "arch_kwargs": {"in_features": 3, "num_classes": 2, "hidden": [4]}, "epochs": 2,
           "lr": 0.01, "batch_size": 8, "seed": 0}
    X, y = np.random.default_rng(0).normal(size=(16, 3)).astype(np.float32), np.arange(16) % 2
    fit_classifier(rec, X, y, description="training toy model", progress=True)
    out, err = capsys.readouterr()
    assert out == "" and err.startswith("training toy model: 2/2 epochs in ") and err.rstrip().endswith("/s")
    fit_classifier(rec, X, y, description="training toy model")  # progress off: silent
    assert capsys.readouterr() == ("", "")
    console = _log()
    with SampleProgress(10, "x", True, unit="epochs", console=console, log_every=3600.0) as slow:
        slow.started -= 40.0  # 1 epoch in 40 s: the rate keeps two digits instead of rounding to 0/s
        slow.advance(1)
    assert console.file.getvalue().rstrip().endswith(", 0.025/s")


def test_role_models_trained_on_a_cache_miss_show_their_epochs(tmp_path, capsys):
    """The inversion roles (a VAE prior, a DP-SGD target) train for minutes on mnist5k: on a cache miss each
    names itself and counts epochs on stderr; a cache hit loads silently."""
    from rpdist.attacks import roles

    roles.generator(cache_dir=tmp_path, epochs=2, dataset="digits", exclude=3, progress=True)
    out, err = capsys.readouterr()
    assert out == "" and err.startswith("training the digits generator without class 3: 2/2 epochs in ")
    roles.generator(cache_dir=tmp_path, epochs=2, dataset="digits", exclude=3, progress=True)
    assert capsys.readouterr() == ("", "")
    roles.dpsgd_model(None, cache_dir=tmp_path, dataset="digits", progress=True)
    lines = capsys.readouterr().err.splitlines()  # more than one when training outlasts the 60 s log interval
    assert all(line.startswith("training the digits DP-SGD target (clip only): ") for line in lines)
    assert lines[-1].startswith("training the digits DP-SGD target (clip only): 30/30 epochs in ")
