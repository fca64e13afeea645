"""Losing nodes of a real two-node Ray cluster on this machine (`ray start --head` and `ray start
--address`, one CPU each): a worker node's replica is lost midway and the run finishes on the head
with the same certificates; a lost head is one line, exit status 3, and a rerun resumes.

The run that is interrupted is `rpdist certify` in a child process (tests/multinode.py `drive`)
with small chunks, which SIGKILLs a node's whole session after a fixed number of units: the loss
always comes at the same point of the run. Every node is stopped at the end, and the fixtures fail
if any process of theirs survives.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys

import numpy as np
import pyarrow.parquet as pq
import pytest

from tests.multinode import Node, wait_for_nodes
from tests.test_cluster import RAY_HEADS, ROOT, _client_env, _rpdist

pytestmark = [pytest.mark.slow, RAY_HEADS]  # one worker runs every real Ray head (see test_cluster)

CERTIFY = ["certify", "--dataset", "tiny.npz", "--model", "linear.pt", "--split", "all", "--sigma", "0.5",
           "--n", "10000", "--n0", "100", "--batch-size", "500", "--quiet"]
# 24 inputs in chunks of 4: 6 chunks of 16 units (1 selection + 3 estimation units per input).
CHUNK_SAMPLES = 4 * 10_100
UNITS = 96
KILL_AFTER = 20  # units: chunk 0 is written, most of the run is still to do


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    import torch

    path = tmp_path_factory.mktemp("inputs")
    rng = np.random.default_rng(0)
    np.savez(path / "tiny.npz", X=rng.normal(size=(24, 4)).astype(np.float32), y=rng.integers(0, 2, 24))
    torch.manual_seed(0)
    torch.jit.save(torch.jit.script(torch.nn.Linear(4, 2)), str(path / "linear.pt"))
    return path


def _stopped(*nodes: Node) -> None:
    killed = {}
    for node in nodes:  # workers first: the head's stop also claims processes naming its temp dir
        killed[node.proc.pid] = node.stop()
    left = {pid for node in nodes for pid in node.processes()}
    assert not left, f"ray processes survived: {left} (SIGKILLed at stop: {killed})"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """A head and a worker node, one CPU each."""
    work = tmp_path_factory.mktemp("cluster")
    head = Node(work / "head.log")
    nodes = [head]
    try:
        wait_for_nodes(head, 1)
        nodes.insert(0, Node(work / "worker.log", head_gcs=head.gcs, temp_dir=head.temp_dir))
        wait_for_nodes(head, 2)
        yield head, nodes[0]
    finally:
        _stopped(*nodes)


def _drive(args: list[str], cwd, timeout: float = 300, **env) -> subprocess.CompletedProcess:
    """`rpdist ARGS` through tests/multinode.py's test hooks, in a child process."""
    return subprocess.run([sys.executable, "-m", "tests.multinode", *args], env=_client_env(PYTHONPATH=str(ROOT), **env), cwd=cwd,
                          capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)


def _certificates(path):
    return pq.read_table(path / "certificates.parquet").to_pandas()


def _assert_same(a, b) -> None:
    np.testing.assert_array_equal(a["input_id"].to_numpy(), np.arange(24))
    np.testing.assert_array_equal(b["input_id"].to_numpy(), np.arange(24))  # no input lost or written twice
    for column in ("counts", "selection_counts"):
        np.testing.assert_array_equal(np.stack(a[column].to_numpy()), np.stack(b[column].to_numpy()))
    for column in ("prediction", "pa_lower", "radius"):
        np.testing.assert_array_equal(a[column].to_numpy(), b[column].to_numpy())


@pytest.fixture(scope="module")
def undisturbed(cluster, inputs, tmp_path_factory):
    """`rpdist submit --follow` of the certify job to the two-node cluster, nothing lost: the
    reference for the runs that lose a node."""
    head, _ = cluster
    out = tmp_path_factory.mktemp("undisturbed")
    result = _rpdist("submit", "--address", head.job_api, "--follow", "--", *CERTIFY, "--workers", "2",
                     "--out", str(out), "--run-id", "job", cwd=inputs, timeout=300)
    return result, out / "job"


def test_submit_certify_to_a_two_node_cluster(cluster, undisturbed):
    head, _ = cluster
    result, run = undisturbed
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    job_id = re.search(r"submitted job (\S+) to ", result.stdout).group(1)
    assert "certify summary" in result.stdout

    from ray.job_submission import JobSubmissionClient

    assert str(JobSubmissionClient(head.job_api).get_job_status(job_id)) == "SUCCEEDED"
    df = _certificates(run)
    assert len(df) == 24 and all(sum(c) == 10_000 for c in df["counts"])
    assert json.loads((run / "manifest.json").read_text())["device"]["workers"] == 2


def test_losing_a_worker_node_midway_finishes_on_the_head(cluster, undisturbed, inputs, tmp_path):
    head, worker = cluster
    info = tmp_path / "info.json"
    result = _drive([*CERTIFY, "--workers", "2", "--address", head.address, "--out", str(tmp_path),
                     "--run-id", "r"], cwd=inputs, RPMN_CHUNK_SAMPLES=str(CHUNK_SAMPLES),
                    RPMN_KILL_AFTER=str(KILL_AFTER), RPMN_KILL_SID=str(worker.proc.pid), RPMN_INFO=str(info))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    # One replica on each node, until the worker node was lost (its processes are all gone).
    seen = json.loads(info.read_text())
    nodes = [replica["node"] for replica in seen["replicas"]]
    assert len(set(nodes)) == 2 and seen["head"][0] in nodes, seen
    assert worker.proc.poll() is not None and not worker.processes()
    manifest = json.loads((tmp_path / "r" / "manifest.json").read_text())
    assert manifest["status"] == "complete" and manifest["details"]["plan"]["chunks"] == 6
    assert manifest["timings"]["samples_this_session"] == 24 * 10_100  # every unit counted once
    _assert_same(_certificates(tmp_path / "r"), _certificates(undisturbed[1]))


def test_losing_the_head_is_one_line_and_a_rerun_resumes(cluster, undisturbed, inputs, tmp_path):
    """A head alone (one replica) is lost midway: one line, exit status 3; the rerun against
    another head resumes from the chunks already written."""
    lone = Node(tmp_path / "lone.log")
    try:
        wait_for_nodes(lone, 1)
        run = [*CERTIFY, "--workers", "1", "--out", str(tmp_path / "out"), "--run-id", "r"]
        result = _drive([*run, "--address", lone.address], cwd=inputs, RPMN_CHUNK_SAMPLES=str(CHUNK_SAMPLES),
                        RPMN_KILL_AFTER=str(KILL_AFTER), RPMN_KILL_SID=str(lone.proc.pid))
    finally:
        _stopped(lone)
    assert result.returncode == 3, result.stdout[-3000:] + result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    ours = [line for line in result.stderr.splitlines() if line.startswith("rpdist:")]
    assert ours == ["rpdist: error: lost the Ray cluster's head (no answer for 15 s); finished chunks are saved; "
                    "rerun the same command to resume"], result.stderr[-3000:]
    parts = sorted(p.name for p in (tmp_path / "out" / "r" / "parts").iterdir())
    assert parts and len(parts) < 6 and parts[0] == "chunk-000000.parquet", parts

    head, _ = cluster  # a fresh head for this run (the worker node may be lost by now: one replica)
    result = _drive([*run, "--address", head.address], cwd=inputs, RPMN_CHUNK_SAMPLES=str(CHUNK_SAMPLES))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    manifest = json.loads((tmp_path / "out" / "r" / "manifest.json").read_text())
    assert manifest["timings"]["resumed_chunks"] == len(parts)
    assert manifest["timings"]["samples_this_session"] == (24 - 4 * len(parts)) * 10_100
    _assert_same(_certificates(tmp_path / "out" / "r"), _certificates(undisturbed[1]))
