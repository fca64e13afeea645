"""A real two-node Ray cluster on this machine, for the node-loss tests: `ray start --head` and
`ray start --address` as separate `--block` processes, each in a session of its own, with its own
ports and one CPU.

Each node is stopped (or killed, to simulate losing it) by its session: `ray start`, its raylet and
the workers the raylet forked all stay in that session. Nothing else on the machine is touched.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

from tests.test_cluster import BIN, _client_env, _free_ports, _ours, _stop_head


class Node:
    """One `ray start --block` process: the head (with the dashboard and job API) or a worker."""

    def __init__(self, log: Path, *, head_gcs: int | None = None, temp_dir: str | None = None):
        self.is_head = head_gcs is None
        # Ray's socket paths must fit in 107 bytes: a short private temp dir. A worker node shares
        # the head's (Ray refuses another on a non-head node) and marks its own files by node id.
        self.temp_dir = temp_dir or tempfile.mkdtemp(prefix="rpmn", dir="/tmp")
        ports = _free_ports(10)
        common = ["--block", "--node-ip-address=127.0.0.1", "--num-cpus=1", "--num-gpus=0",
                  "--object-store-memory=100000000", f"--node-manager-port={ports[0]}",
                  f"--object-manager-port={ports[1]}", f"--metrics-export-port={ports[2]}",
                  f"--dashboard-agent-listen-port={ports[3]}", f"--dashboard-agent-grpc-port={ports[4]}",
                  f"--runtime-env-agent-port={ports[5]}", "--disable-usage-stats"]
        if self.is_head:
            self.gcs, self.dashboard = ports[6], ports[7]
            command = ["--head", f"--port={self.gcs}", f"--dashboard-port={self.dashboard}",
                       "--include-dashboard=true", "--dashboard-host=127.0.0.1",
                       f"--ray-client-server-port={ports[8]}", f"--temp-dir={self.temp_dir}"]
        else:
            self.gcs, self.dashboard = head_gcs, None
            command = [f"--address=127.0.0.1:{head_gcs}"]
        self.log_path = log
        self.log = open(log, "wb")
        env = _client_env(RPDIST_CACHE=str(log.parent / "cache"))
        self.proc = subprocess.Popen([str(BIN / "ray"), "start", *command, *common], env=env, stdout=self.log,
                                     stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
                                     cwd=log.parent)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.gcs}"

    @property
    def job_api(self) -> str:
        return f"http://127.0.0.1:{self.dashboard}"

    def processes(self) -> set[int]:
        """Live processes of this node: its session (a worker node shares the head's temp dir, so
        only the head also claims processes naming the temp dir)."""
        return _ours(self.proc.pid, self.temp_dir if self.is_head else f"/nonexistent-{self.proc.pid}")

    def stop(self) -> set[int]:
        """Stop gracefully (SIGTERM to `ray start`), then SIGKILL what is left; returns survivors."""
        if self.is_head:
            killed = _stop_head(self.proc, self.temp_dir)
        else:
            killed = _stop_head(self.proc, f"/nonexistent-{self.proc.pid}")
        self.log.close()
        time.sleep(0.3)
        if self.is_head and not self.processes():
            shutil.rmtree(self.temp_dir, ignore_errors=True)
        return killed

    def tail(self) -> str:
        return self.log_path.read_text(errors="replace")[-3000:]


def wait_for_nodes(head: Node, count: int, timeout: float = 180) -> None:
    """Until the job API answers and the cluster has ``count`` alive nodes."""
    deadline = time.monotonic() + timeout
    while True:
        if head.proc.poll() is not None:
            raise RuntimeError(f"the head exited with {head.proc.returncode}:\n{head.tail()}")
        try:
            with urllib.request.urlopen(f"{head.job_api}/nodes?view=summary", timeout=3) as response:
                summary = json.load(response)["data"]["summary"]
            if sum(1 for node in summary if node["raylet"]["state"] == "ALIVE") >= count:
                return
        except (OSError, KeyError, ValueError):
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"the cluster did not reach {count} nodes:\n{head.tail()}")
        time.sleep(0.5)


def kill_session(sid: int) -> None:
    """SIGKILL every live process of session ``sid`` (one node of the cluster)."""
    for pid in _ours(sid, f"/nonexistent-{sid}"):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def drive(argv: list[str]) -> None:
    """`rpdist ARGV` as the CLI runs it, with test hooks from the environment:

    RPMN_CHUNK_SAMPLES: samples per chunk (small, so that a run writes several chunk files);
    RPMN_KILL_AFTER, RPMN_KILL_SID: after that many units, SIGKILL that session (a node);
    RPMN_INFO: a JSON file for the replicas' info() and the head's node id, written at the first unit.
    """
    import ray

    import rpdist.pipelines.run as run
    from rpdist.distributed import plan, pool
    from rpdist.cli.main import main

    if os.environ.get("RPMN_CHUNK_SAMPLES"):
        plan.CHUNK_SAMPLES = int(os.environ["RPMN_CHUNK_SAMPLES"])
    kill_after = int(os.environ.get("RPMN_KILL_AFTER", 0))
    units = []

    def hook(unit, samples):
        units.append(unit)
        if len(units) == 1 and os.environ.get("RPMN_INFO"):
            head = [n["NodeID"] for n in ray.nodes() if n["Alive"] and "node:__internal_head__" in n["Resources"]]
            Path(os.environ["RPMN_INFO"]).write_text(json.dumps({"replicas": pool.WARM.pool.info(), "head": head}))
        if len(units) == kill_after:
            kill_session(int(os.environ["RPMN_KILL_SID"]))

    execute = run.execute
    run.execute = lambda spec, progress=True, on_unit=None: execute(spec, progress, on_unit=hook)
    main(argv)


if __name__ == "__main__":
    import sys

    drive(sys.argv[1:])
