"""Running on a cluster: cluster.yaml checked offline with Ray's own validator, and
``rpdist submit`` against a real Ray head started for this module.

The head runs in a session of its own with its own temp dir and ports, so it never meets the
session Ray of the other tests, and this process never calls ``ray.init``. It is stopped, even
when a test fails, by SIGTERM to ``ray start`` and then SIGKILL of anything left in its session
(or naming its temp dir); the fixture fails if a process of it survives.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from rpdist.cli.main import root_command
from rpdist.errors import InputError

# Under `pytest -n 2` one worker runs every test that starts a real Ray head (this module's and
# test_multinode's), so two heads never compete: their loss timeouts are what these tests check.
RAY_HEADS = pytest.mark.xdist_group("ray-heads")
pytestmark = RAY_HEADS

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
GPU_FAMILIES = ("g4dn.", "g5.", "g6.", "g6e.", "p3.", "p4d.", "p5.")


# --------------------------------------------------------------------------- cluster.yaml


@pytest.fixture(scope="module")
def raw_config() -> dict:
    return yaml.safe_load((ROOT / "cluster.yaml").read_text())


@pytest.fixture(scope="module")
def config(raw_config) -> dict:
    """cluster.yaml as `ray up` sees it: merged with Ray's AWS defaults and schema-validated."""
    from ray.autoscaler._private.util import prepare_config, validate_config

    prepared = prepare_config(copy.deepcopy(raw_config))
    validate_config(prepared)
    return prepared


def prepare(args, staging):
    """Stage a command line the way ``rpdist submit`` does, with this installation's CLI."""
    from rpdist.pipelines.submit import prepare as stage

    return stage(args, staging, root_command())


def lock_pins() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "requirements.lock").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, version = line.split("==")
            pins[name.lower().replace("_", "-")] = version
    return pins


def _worker_type(config) -> tuple[str, dict]:
    workers = [(k, v) for k, v in config["available_node_types"].items() if k != config["head_node_type"]]
    assert len(workers) == 1, workers
    return workers[0]


def _worker_setup(config) -> list[str]:
    """The commands a worker node runs: a node type's own list replaces the global ones."""
    _, node = _worker_type(config)
    return node.get("worker_setup_commands", config["worker_setup_commands"])


def test_cluster_yaml_passes_rays_schema_validator(raw_config, config):
    from ray.autoscaler._private.util import prepare_config, validate_config

    assert config["provider"]["type"] == "aws" and config["head_node_type"] in config["available_node_types"]
    # The validator is live: the same file with one misspelled key is refused.
    broken = copy.deepcopy(raw_config)
    broken["available_node_types"][raw_config["head_node_type"]]["min_worker"] = 0
    import jsonschema

    with pytest.raises(jsonschema.ValidationError, match="min_worker"):
        validate_config(prepare_config(broken))


def test_dashboard_listens_on_localhost_of_the_head_only(raw_config, config):
    head_start = " ".join(config["head_start_ray_commands"])
    assert re.search(r"ray start --head\b", head_start)
    assert re.findall(r"--dashboard-host[= ](\S+)", head_start) == ["127.0.0.1"]
    assert "0.0.0.0" not in (ROOT / "cluster.yaml").read_text()
    # No rule opens the dashboard / job API port to anyone.
    rules = raw_config["provider"].get("security_group", {}).get("IpPermissions", [])
    for rule in rules:
        assert not (rule.get("FromPort", 0) <= 8265 <= rule.get("ToPort", 65535)), rule
    for node in config["available_node_types"].values():
        assert "SecurityGroupIds" not in node["node_config"]


def test_cpu_head_and_autoscaled_gpu_workers(config):
    head = config["available_node_types"][config["head_node_type"]]
    assert not head["node_config"]["InstanceType"].startswith(GPU_FAMILIES)
    name, worker = _worker_type(config)
    assert worker["node_config"]["InstanceType"].startswith(GPU_FAMILIES), name
    assert 0 <= worker["min_workers"] <= worker["max_workers"] and worker["max_workers"] >= 1
    assert config["max_workers"] >= worker["max_workers"]


def test_setup_installs_the_locked_pins_with_the_right_torch_build(config):
    pins = lock_pins()
    assert pins["ray"] == "2.60.0" and pins["torch"] == "2.13.0"
    # The working tree, with its requirements.lock, is mounted where setup reads it.
    mounts = {remote: local for remote, local in config["file_mounts"].items()}
    assert mounts.get("~/rpdist") == "." and (ROOT / "requirements.lock").is_file()
    head, worker = config["head_setup_commands"], _worker_setup(config)
    for commands, kind in ((head, "head"), (worker, "worker")):
        text = "\n".join(commands)
        lock_at = [i for i, c in enumerate(commands) if "-r ~/rpdist/requirements.lock" in c]
        torch_at = [i for i, c in enumerate(commands) if f"torch=={pins['torch']}" in c]
        assert lock_at and torch_at and torch_at[0] < lock_at[0], kind  # torch first, then the lock
        assert re.search(r"pip install .*--no-deps.* -e ~/rpdist", text), kind  # rpdist cannot move a pin
        # Every pin written out in the commands is the lock's version.
        for name, version in re.findall(r"\b([A-Za-z0-9_.\-]+)==([0-9][^\s'\"]*)", text):
            key = name.lower().replace("_", "-")
            if key in pins:
                assert version == pins[key], (kind, name, version)
    head_torch = next(c for c in head if f"torch=={pins['torch']}" in c)
    worker_torch = next(c for c in worker if f"torch=={pins['torch']}" in c)
    assert "download.pytorch.org/whl/cpu" in head_torch  # the head: the CPU wheel of the lock
    assert "/whl/cpu" not in worker_torch  # GPU workers: a CUDA build of the same version
    assert any("torch.version.cuda" in c and "cuda.is_available" in c for c in worker)


def test_ray_runs_from_the_venv_without_usage_stats(config):
    for commands in (config["head_start_ray_commands"], config["worker_start_ray_commands"]):
        start = next(c for c in commands if "ray start" in c)
        assert 'PATH="$HOME/rpdist-venv/bin:$PATH"' in start  # jobs find the `rpdist` command
        assert "RAY_USAGE_STATS_ENABLED=0" in start and "RAY_AUTH_MODE=" in start
    assert "--address=$RAY_HEAD_IP:6379" in " ".join(config["worker_start_ray_commands"])


# --------------------------------------------------------------------------- rpdist submit: offline


def test_prepare_stages_input_files_and_joins_the_cluster(tmp_path, monkeypatch):
    data = tmp_path / "in" / "data.npz"
    data.parent.mkdir()
    data.write_bytes(b"npz bytes")
    other = tmp_path / "other" / "data.npz"  # same name, different file
    other.parent.mkdir()
    other.write_bytes(b"other bytes")
    out = tmp_path / "out"
    out.mkdir()
    monkeypatch.chdir(tmp_path / "in")
    staging = tmp_path / "staging"
    staging.mkdir()
    job = prepare(["certify", "--dataset", "data.npz", f"--model={other}", "--sigma", "0.5",
                   "--out", str(out), "--run-id", "r"], staging)
    assert job.args == ["certify", "--dataset", "data.npz", "--model=1_data.npz", "--sigma", "0.5",
                        "--out", str(out), "--run-id", "r"]
    assert (staging / "data.npz").read_bytes() == b"npz bytes"
    assert (staging / "1_data.npz").read_bytes() == b"other bytes"
    assert job.staged == {str(data): "data.npz", str(other): "1_data.npz"}
    assert job.entrypoint.startswith("rpdist certify --dataset data.npz ")
    assert job.notes == []  # --out is absolute
    # A relative --out is flagged, an explicit --address is kept, nothing else is staged.
    job = prepare(["certify", "--dataset", "insurance", "--sigma", "0.5", "--address", "ray://x:10001"],
                  tmp_path / "staging")
    assert job.args[-2:] == ["--address", "ray://x:10001"] and job.staged == {}
    assert len(job.notes) == 1 and "--out" in job.notes[0]


def test_yaml_inputs_carry_the_files_they_name(tmp_path):
    from rpdist.pipelines.submit import _Staging

    (tmp_path / "data.csv").write_text("a,label\n1,0\n")
    spec = tmp_path / "sweep.yaml"
    spec.write_text(yaml.safe_dump({"dataset": "data.csv", "sigmas": [0.25, 0.5], "out": "/results",
                                    "models": [str(tmp_path / "data.csv"), "mlp"]}))
    staging = tmp_path / "staging"
    staging.mkdir()
    assert _Staging(staging).add(spec) == "sweep.yaml"
    staged = yaml.safe_load((staging / "sweep.yaml").read_text())
    assert staged == {"dataset": "data.csv", "sigmas": [0.25, 0.5], "out": "/results", "models": ["data.csv", "mlp"]}
    assert (staging / "data.csv").read_text() == "a,label\n1,0\n"


def test_prepare_refuses_bad_command_lines(tmp_path):
    from rpdist.pipelines.submit import resolve_address

    for args in ([], ["no-such-command"], ["submit", "--", "certify"]):
        with pytest.raises(InputError):
            prepare(args, tmp_path)
    assert resolve_address("127.0.0.1:8265") == "http://127.0.0.1:8265"
    with pytest.raises(InputError):
        resolve_address("ray://head:10001")


def test_prepare_stages_a_sweep_and_the_files_it_names(tmp_path, monkeypatch):
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    (inputs / "tiny.npz").write_bytes(b"npz")
    (inputs / "sweep.yaml").write_text("dataset: tiny.npz  # relative to the current directory\n"
                                       "sigma: [0.25, 0.5]\nn: [100]\n")
    monkeypatch.chdir(inputs)
    staging = tmp_path / "staging"
    staging.mkdir()
    job = prepare(["sweep", "sweep.yaml", "--out", "/srv/results"], staging)
    assert job.args == ["sweep", "sweep.yaml", "--out", "/srv/results"]
    assert yaml.safe_load((staging / "sweep.yaml").read_text())["dataset"] == "tiny.npz"
    assert (staging / "tiny.npz").read_bytes() == b"npz" and job.notes == []


def test_remote_out_uris_pass_through_without_a_warning(tmp_path):
    for args in (["certify", "--dataset", "insurance", "--sigma", "0.5", "--out", "s3://bucket/rpdist"],
                 ["certify", "--dataset", "insurance", "--sigma", "0.5", "--out=gs://bucket/rpdist"]):
        job = prepare(args, tmp_path)
        assert job.args == args and job.notes == []


class FakeJobClient:
    """Stands in for JobSubmissionClient: records the submission, replays statuses and logs."""

    def __init__(self, statuses, logs=("line 1\n", "line 2\n"), message="Job entrypoint command failed with "
                 "exit code 2, last available logs (truncated to 20,000 chars):\nboom"):
        self.statuses, self.logs, self.message, self.submitted = list(statuses), list(logs), message, None

    def submit_job(self, *, entrypoint, runtime_env, metadata):
        workdir = Path(runtime_env["working_dir"])
        self.submitted = dict(entrypoint=entrypoint, env_vars=runtime_env["env_vars"],
                              files={p.name: p.read_bytes() for p in workdir.iterdir()})
        return "raysubmit_fake"

    def get_job_status(self, job_id):
        return self.statuses.pop(0) if len(self.statuses) > 1 else self.statuses[0]

    async def tail_job_logs(self, job_id):
        for chunk in self.logs:
            yield chunk

    def get_job_info(self, job_id):
        return type("Info", (), {"message": self.message})()


@pytest.mark.parametrize("final, follow, wait, expected", [
    ("SUCCEEDED", True, True, None), ("FAILED", True, True, "FAILED"),
    ("FAILED", False, True, "FAILED"), ("RUNNING", False, True, None), ("FAILED", False, False, None)])
def test_submit_waits_follows_and_reports_failures(monkeypatch, tmp_path, final, follow, wait, expected):
    import rpdist.pipelines.submit as sub

    client = FakeJobClient(["PENDING", "PENDING", final])
    monkeypatch.setattr(sub, "connect", lambda address: client)
    monkeypatch.setattr(sub, "_sleep", lambda s: None)
    (tmp_path / "data.csv").write_text("a,label\n1,0\n")
    monkeypatch.chdir(tmp_path)
    echoed, written = [], []
    args = ["certify", "--dataset", "data.csv", "--sigma", "0.5", "--out", str(tmp_path)]
    try:
        job_id = sub.submit("127.0.0.1:8265", args, root_command(), follow=follow, wait=wait, echo=echoed.append, write=written.append)
        assert expected is None and job_id == "raysubmit_fake"
    except sub.JobFailedError as exc:
        assert exc.status == expected and str(exc) == "job raysubmit_fake FAILED: Job entrypoint command failed with exit code 2"
    assert client.submitted["files"] == {"data.csv": b"a,label\n1,0\n"}
    assert client.submitted["env_vars"]["RAY_USAGE_STATS_ENABLED"] == "0"
    assert client.submitted["entrypoint"].startswith("rpdist certify --dataset data.csv --sigma 0.5 --out ")
    assert echoed[0] == "submitted job raysubmit_fake to http://127.0.0.1:8265"
    assert "  follow the logs: ray job logs --address http://127.0.0.1:8265 --follow raysubmit_fake" in echoed
    assert written == (["line 1\n", "line 2\n"] if follow else [])
    assert len(client.statuses) == (3 if not wait and not follow else 1)  # --no-wait never polls


def test_a_failed_job_without_a_message_says_only_its_status(monkeypatch, tmp_path):
    import rpdist.pipelines.submit as sub

    client = FakeJobClient(["PENDING", "FAILED"], message=None)
    monkeypatch.setattr(sub, "connect", lambda address: client)
    monkeypatch.setattr(sub, "_sleep", lambda s: None)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(sub.JobFailedError) as failed:
        sub.submit("127.0.0.1:8265", ["report", str(tmp_path)], root_command(), follow=False, wait=True,
                   echo=lambda line: None, write=lambda text: None)
    assert str(failed.value) == "job raysubmit_fake FAILED"


def _free_ports(count: int) -> list[int]:
    """Distinct free ports: all sockets are held open until every port is picked."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def test_unreachable_address_is_one_line_and_exit_2(capsys, monkeypatch):
    from rpdist.cli.main import main

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    for argv in (["submit", "--address", f"http://127.0.0.1:{_free_ports(1)[0]}", "--", "datasets"],
                 ["submit", "--", "datasets"]):
        with pytest.raises(SystemExit) as exit_info:
            main(argv)
        err = capsys.readouterr().err
        assert exit_info.value.code == 2, err
        assert len(err.strip().splitlines()) == 1 and err.startswith("rpdist: error: ")


# --------------------------------------------------------------------------- rpdist submit: a real head


def _ours(session: int, marker: str) -> set[int]:
    """Live processes of the head's session (Ray's workers make process groups of their own, but
    stay in the session), or whose command line names the head's private temp dir."""
    pids = set()
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            pid = int(proc.name)
            if pid == os.getpid() or proc.stat().st_uid != os.getuid():
                continue
            if (proc / "stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
                continue  # a zombie is already dead; its parent or init reaps it
            if os.getsid(pid) == session or marker in (proc / "cmdline").read_bytes().decode(errors="replace"):
                pids.add(pid)
        except (OSError, ValueError, IndexError):
            continue
    return pids


def _stop_head(proc: subprocess.Popen, temp_dir: str) -> set[int]:
    """SIGTERM `ray start --block` (Ray then stops its own processes), wait, SIGKILL what is left.

    Returns the processes that had to be killed. Only the head's session and processes naming
    its temp dir are touched: nothing else on the machine.
    """
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        pass
    deadline = time.monotonic() + 5
    while _ours(proc.pid, temp_dir) and time.monotonic() < deadline:
        time.sleep(0.2)
    stragglers = _ours(proc.pid, temp_dir)
    for pid in stragglers:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        pass
    return stragglers


def _client_env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update(RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0", PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}")
    env.update(extra)
    return env


@pytest.fixture(scope="module")
def ray_head(tmp_path_factory):
    """A real head started like cluster.yaml starts one: `ray start --head --block`, the dashboard on
    127.0.0.1, the venv's bin/ first on PATH. Stopped in `finally`, whatever the tests did."""
    work = tmp_path_factory.mktemp("head")
    temp_dir = tempfile.mkdtemp(prefix="rpdh", dir="/tmp")  # short: Ray's socket paths must fit
    gcs, dashboard, agent, client = _free_ports(4)
    command = [str(BIN / "ray"), "start", "--head", "--block", "--node-ip-address=127.0.0.1",
               f"--port={gcs}", f"--dashboard-port={dashboard}", "--include-dashboard=true",
               "--dashboard-host=127.0.0.1", f"--dashboard-agent-listen-port={agent}",
               f"--ray-client-server-port={client}", "--num-cpus=1", "--num-gpus=0",
               "--object-store-memory=200000000", f"--temp-dir={temp_dir}", "--disable-usage-stats"]
    log = open(work / "head.log", "wb")
    env = _client_env(RPDIST_CACHE=str(work / "cache"))
    proc = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            start_new_session=True, cwd=work)
    address = f"http://127.0.0.1:{dashboard}"
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                pytest.fail(f"ray start exited with {proc.returncode}:\n{(work / 'head.log').read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"{address}/api/version", timeout=2) as response:
                    if json.load(response).get("ray_version"):
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"the head's job API did not come up:\n{(work / 'head.log').read_text()[-3000:]}")
            time.sleep(0.5)
        yield address
    finally:
        stragglers = _stop_head(proc, temp_dir)
        log.close()
        time.sleep(0.5)
        left = _ours(proc.pid, temp_dir)
        shutil.rmtree(temp_dir, ignore_errors=True)
        assert not left, f"ray processes survived the head: {left} (SIGKILLed: {stragglers})"


def _rpdist_command() -> list[str]:
    return [str(BIN / "rpdist")] if (BIN / "rpdist").exists() else [sys.executable, "-m", "rpdist.cli.main"]


def _rpdist(*args: str, timeout: float = 120, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([*_rpdist_command(), *args], env=_client_env(), capture_output=True, text=True,
                          timeout=timeout, cwd=cwd, stdin=subprocess.DEVNULL)


@pytest.fixture(scope="module")
def failing_submission(ray_head, tmp_path_factory):
    """`rpdist submit --follow` of a job that fails on the cluster, started in the background so
    that it overlaps the certify job (every job start costs seconds on a 2-core machine)."""
    out = tmp_path_factory.mktemp("failing")
    proc = subprocess.Popen([*_rpdist_command(), "submit", "--address", ray_head, "--follow", "--", "certify",
                             "--dataset", "no-such-dataset", "--sigma", "0.5", "--out", str(out), "--quiet"],
                            env=_client_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            stdin=subprocess.DEVNULL)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()


@pytest.mark.slow
def test_submit_runs_certify_on_a_real_head_with_staged_files(ray_head, failing_submission, tmp_path):
    import numpy as np
    import torch

    # Local input files: a 3-row dataset and a TorchScript model; they must travel with the job.
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    rng = np.random.default_rng(0)
    np.savez(inputs / "tiny.npz", X=rng.normal(size=(3, 4)).astype(np.float32), y=np.array([0, 1, 1]))
    torch.manual_seed(0)
    torch.jit.save(torch.jit.script(torch.nn.Linear(4, 2)), str(inputs / "linear.pt"))
    out = tmp_path / "out"

    result = _rpdist("submit", "--address", ray_head, "--follow", "--",
                     "certify", "--dataset", "tiny.npz", "--model", "linear.pt", "--split", "all",
                     "--sigma", "0.5", "--n", "100", "--n0", "20", "--limit", "3",
                     "--out", str(out), "--run-id", "job", "--quiet", cwd=inputs)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    job_id = re.search(r"submitted job (\S+) to ", result.stdout).group(1)
    assert f"ray job logs --address {ray_head} --follow {job_id}" in result.stdout
    assert f"ray job status --address {ray_head} {job_id}" in result.stdout
    assert "staged:" in result.stdout and "certify summary" in result.stdout  # the job's own output

    from ray.job_submission import JobSubmissionClient

    client = JobSubmissionClient(ray_head)
    assert str(client.get_job_status(job_id)) == "SUCCEEDED"
    assert "results:" in client.get_job_logs(job_id)

    df = pq.read_table(out / "job" / "certificates.parquet").to_pandas()
    assert len(df) == 3 and (df["n"] == 100).all() and (df["n0"] == 20).all()
    assert all(sum(c) == 100 for c in df["counts"])
    manifest = json.loads((out / "job" / "manifest.json").read_text())
    # The job read exactly the local files (staged copies, same bytes).
    assert manifest["config"]["dataset"]["sha256"] == hashlib.sha256((inputs / "tiny.npz").read_bytes()).hexdigest()
    assert manifest["config"]["model"]["sha256"] == hashlib.sha256((inputs / "linear.pt").read_bytes()).hexdigest()


@pytest.mark.slow
def test_a_failing_job_makes_submit_follow_exit_1(failing_submission):
    stdout, stderr = failing_submission.communicate(timeout=120)
    assert failing_submission.returncode == 1, stdout[-2000:] + stderr[-2000:]
    assert "unknown dataset 'no-such-dataset'" in stdout  # the job's own one-line error, streamed back
    assert re.search(r"rpdist: job \S+ FAILED", stderr)
