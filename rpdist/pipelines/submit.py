"""Run an rpdist command on a Ray cluster as a Ray job: ``rpdist submit -- sweep sweep.yaml``.

The job's entrypoint is the shell command ``rpdist ARGS...``, run on the cluster's head node by
Ray's job supervisor. The cluster must therefore have rpdist installed, with its ``bin/`` on the
PATH of its Ray processes: ``cluster.yaml`` does that (a venv, and ``ray start`` with the venv's
``bin/`` first on PATH). We chose the ``rpdist`` command over ``python -m rpdist.cli.main``
because a bare ``python`` on the head may well be the system interpreter, while the ``rpdist``
script carries the interpreter it was installed with.

Local input files named in the arguments (a sweep YAML, a dataset or model file, and files
named inside a YAML) travel with the job: they are copied into a staging directory that becomes
the job's runtime-env ``working_dir``, and the arguments are rewritten to the copies' names. The
job runs in that directory on the head, so a relative ``--out`` would write into Ray's temporary
copy of it; give an absolute ``--out`` (a path on the head, or shared storage).

Inside a job Ray sets ``RAY_ADDRESS``, and :func:`rpdist.distributed.pool.ensure_ray` joins that cluster, so
the job's replicas run on the cluster rather than on a private Ray inside the job.
"""

from __future__ import annotations

import asyncio
import os
import re
import shlex
import shutil
import socket
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from collections.abc import Callable
from urllib.parse import urlsplit

from rpdist.errors import InputError, first_line

#: Environment of the job on the cluster (on top of the environment of the cluster's Ray).
JOB_ENV = {"RAY_USAGE_STATS_ENABLED": "0", "PYTHONUNBUFFERED": "1"}
#: Options whose value is an output location: never staged or rewritten.
OUTPUT_OPTIONS = frozenset({"--out", "-o"})
YAML_SUFFIXES = (".yaml", ".yml")
CONNECT_TIMEOUT_S = 10.0
START_TIMEOUT_S = 300.0
TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")


class JobFailedError(RuntimeError):
    """The job ended (or failed to start) with a status other than SUCCEEDED."""

    def __init__(self, job_id: str, status: str, message: str = ""):
        self.job_id, self.status, self.message = job_id, status, message
        super().__init__(f"job {job_id} {status}" + (f": {message}" if message else ""))


@dataclass
class PreparedJob:
    """What will be submitted: the entrypoint, and the local files copied into the working dir."""

    args: list[str]
    entrypoint: str
    staging_dir: Path
    staged: dict[str, str] = field(default_factory=dict)  # local absolute path -> name in working_dir
    notes: list[str] = field(default_factory=list)


def resolve_address(address: str | None) -> str:
    """The job API address: ``--address``, else ``$RAY_ADDRESS``; ``http://`` is implied."""
    address = (address or os.environ.get("RAY_ADDRESS") or "").strip()
    if not address:
        raise InputError("no cluster address: pass --address http://HEAD:8265 or set RAY_ADDRESS")
    if address.startswith("ray://") or address == "auto":
        raise InputError(f"--address must be the cluster's job API (http://HEAD:8265), not {address!r}")
    if "://" not in address:
        address = "http://" + address
    parts = urlsplit(address)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InputError(f"--address must look like http://HEAD:8265, got {address!r}")
    return address.rstrip("/")


def connect(address: str | None):
    """A ``JobSubmissionClient`` for ``address``; an unreachable cluster is an :class:`InputError`."""
    address = resolve_address(address)
    parts = urlsplit(address)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        # Fail fast: the SDK itself would wait for the operating system's TCP timeout.
        socket.create_connection((parts.hostname, port), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as exc:
        raise InputError(f"cannot reach the Ray job API at {address}: {exc.strerror or exc}") from None
    from ray.job_submission import JobSubmissionClient

    try:
        return JobSubmissionClient(address)
    except Exception as exc:  # connection, version or authentication failures of the SDK
        raise InputError(f"cannot use the Ray job API at {address}: {first_line(exc)}") from None


def prepare(rpdist_args: list[str], staging_dir: str | Path, commands) -> PreparedJob:
    """Stage the local files named in ``rpdist_args`` and build the job's entrypoint.

    ``commands`` is the CLI's root click command (the caller passes it, so the library never imports
    the CLI); it tells which tokens name the command and which option is the output.
    """
    args = list(rpdist_args)
    if not args:
        raise InputError("nothing to submit: give the rpdist command after --, e.g. -- sweep sweep.yaml")
    depth, options = _command_options(commands, args)
    outputs = _output_options(options)
    staging = _Staging(Path(staging_dir))
    rewritten = args[:depth]
    skip_next = False
    for token in args[depth:]:
        if skip_next:
            rewritten.append(token)
            skip_next = False
        elif token in outputs:
            rewritten.append(token)
            skip_next = True
        elif token.startswith("--") and "=" in token:
            name, value = token.split("=", 1)
            rewritten.append(token if name in outputs else f"{name}={staging.add_if_file(value)}")
        else:
            rewritten.append(staging.add_if_file(token))
    notes = []
    out = _option_value(rewritten, outputs)
    remote = out is not None and re.match(r"^[A-Za-z][A-Za-z0-9+.\-]*://", out)
    if options is not None and "--out" in options and not remote and (out is None or not os.path.isabs(out)):
        notes.append("--out is relative (default: results): the job writes it inside Ray's temporary "
                     "working directory on the head, which Ray deletes; pass an absolute --out")
    entrypoint = shlex.join(["rpdist", *rewritten])
    return PreparedJob(rewritten, entrypoint, staging.root, staging.staged, notes)


def submit(
    address: str | None,
    rpdist_args: list[str],
    commands,
    *,
    follow: bool = False,
    wait: bool = True,
    echo: Callable[[str], None] | None = None,
    write: Callable[[str], None] | None = None,
) -> str:
    """Submit ``rpdist ARGS`` as a Ray job and return its id (``commands``: the CLI's root command).

    ``wait``: return once the job has started (its working directory unpacked on the head).
    ``follow``: stream its logs through ``write`` until it ends. Raises :class:`JobFailedError`
    if the job fails to start or, with ``follow``, ends with any status but SUCCEEDED.
    """
    echo = echo or print
    address = resolve_address(address)
    with tempfile.TemporaryDirectory(prefix="rpdist-submit-") as staging_dir:
        job = prepare(rpdist_args, staging_dir, commands)  # a bad command line fails here, before any network
        client = connect(address)
        runtime_env = {"working_dir": str(job.staging_dir), "env_vars": dict(JOB_ENV)}
        try:
            # Zips and uploads the staging directory; it may be deleted once this returns.
            job_id = client.submit_job(entrypoint=job.entrypoint, runtime_env=runtime_env,
                                       metadata={"rpdist_args": shlex.join(rpdist_args)[:4096]})
        except Exception as exc:
            raise InputError(f"the cluster refused the job: {first_line(exc)}") from None
    echo(f"submitted job {job_id} to {address}")
    echo(f"  entrypoint: {job.entrypoint}")
    for local, name in job.staged.items():
        echo(f"  staged: {local} -> {name}")
    for note in job.notes:
        echo(f"  note: {note}")
    echo(f"  follow the logs: ray job logs --address {address} --follow {job_id}")
    echo(f"  status:          ray job status --address {address} {job_id}")
    echo(f"  stop it:         ray job stop --address {address} {job_id}")
    try:
        if follow:
            status = follow_job(client, job_id, write=write)
            if status != "SUCCEEDED":
                raise JobFailedError(job_id, status, _job_message(client, job_id))
        elif wait:
            status = wait_until_started(client, job_id)
            if status in ("FAILED", "STOPPED"):
                raise JobFailedError(job_id, status, _job_message(client, job_id))
    except (JobFailedError, KeyboardInterrupt):
        raise
    except Exception as exc:  # the job API went away after the submission
        raise InputError(f"lost the Ray job API at {address} while watching {job_id}: {first_line(exc)}") from None
    return job_id


def job_status(client, job_id: str) -> str:
    return str(client.get_job_status(job_id))


def wait_until_started(client, job_id: str, timeout: float = START_TIMEOUT_S) -> str:
    """Poll until the job leaves PENDING (or ``timeout`` passes); return its status."""
    deadline = time.monotonic() + timeout
    status = job_status(client, job_id)
    while status == "PENDING" and time.monotonic() < deadline:
        _sleep(0.5)
        status = job_status(client, job_id)
    return status


def follow_job(client, job_id: str, write: Callable[[str], None] | None = None, poll_s: float = 1.0) -> str:
    """Stream the job's logs until it ends; return its final status (SUCCEEDED, FAILED, STOPPED)."""
    write = write or _write_stdout

    async def tail() -> None:
        async for chunk in client.tail_job_logs(job_id):
            write(chunk)

    try:
        asyncio.run(tail())
    except Exception as exc:  # the stream broke off; the status below still tells how the job ended
        print(f"rpdist: the log stream of {job_id} broke off ({first_line(exc)}); waiting for the job to end",
              file=sys.stderr)
    status = job_status(client, job_id)
    while status not in TERMINAL:
        _sleep(poll_s)
        status = job_status(client, job_id)
    return status


def _job_message(client, job_id: str) -> str:
    try:
        lines = (client.get_job_info(job_id).message or "").strip().splitlines()
    except Exception:
        return ""
    return lines[0].split(", last available logs", 1)[0] if lines else ""  # the logs were already shown


def _sleep(seconds: float) -> None:
    time.sleep(seconds)  # one place for tests to patch


def _write_stdout(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()




class _Staging:
    """Copies local files into the job's working directory under unique, short names."""

    def __init__(self, root: Path):
        self.root = root
        self.staged: dict[str, str] = {}

    def add_if_file(self, token: str, base: Path | None = None) -> str:
        path = _local_file(token, base)
        return token if path is None else self.add(path)

    def add(self, path: Path) -> str:
        key = str(path)
        if key in self.staged:
            return self.staged[key]
        name = path.name
        taken = set(self.staged.values())
        index = 1
        while name in taken or name in ("", ".", ".."):
            name = f"{index}_{path.name}"
            index += 1
        self.staged[key] = name
        target = self.root / name
        if path.suffix.lower() in YAML_SUFFIXES:
            self._stage_yaml(path, target)
        else:
            shutil.copy2(path, target)
        return name

    def _stage_yaml(self, path: Path, target: Path) -> None:
        """Copy a YAML file; local files it names are staged too and renamed in the copy."""
        import yaml

        try:
            data = yaml.safe_load(path.read_text())
        except (yaml.YAMLError, UnicodeDecodeError, OSError):
            shutil.copy2(path, target)  # not ours to judge: the job reports a broken file
            return
        changed = False

        def walk(node, key=None):
            nonlocal changed
            if isinstance(node, dict):
                return {k: walk(v, k) for k, v in node.items()}
            if isinstance(node, list):
                return [walk(v, key) for v in node]
            if isinstance(node, str) and key not in ("out", "output"):
                found = _local_file(node, path.parent)
                if found is not None and found != path:
                    changed = True
                    return self.add(found)
            return node

        data = walk(data)
        if changed:
            target.write_text(yaml.safe_dump(data, sort_keys=False))
        else:
            shutil.copy2(path, target)


def _local_file(token: str, base: Path | None = None) -> Path | None:
    """The regular file ``token`` names (relative to ``base`` or the current directory), if any."""
    if not token or token.startswith("-") or "://" in token or "\n" in token or len(token) > 4096:
        return None
    candidates = [Path(token).expanduser()]
    if base is not None and not candidates[0].is_absolute():
        candidates.insert(0, base / token)
    for candidate in candidates:
        try:
            if candidate.is_file():
                return candidate.resolve()
        except OSError:
            continue
    return None


def _option_value(args: list[str], names) -> str | None:
    value = None
    for i, arg in enumerate(args):
        if arg in names and i + 1 < len(args):
            value = args[i + 1]
        elif arg.startswith("--") and "=" in arg and arg.split("=", 1)[0] in names:
            value = arg.split("=", 1)[1]
    return value


def _output_options(options: dict[str, tuple[str, ...]] | None) -> frozenset[str]:
    """Spellings of the command's output option (``--out`` and its aliases): never staged."""
    if options is None:
        return OUTPUT_OPTIONS
    return frozenset(options.get("--out", ())) or frozenset({"--out"})


def _command_options(command, args: list[str]) -> tuple[int, dict[str, tuple[str, ...]] | None]:
    """How many leading tokens name the rpdist command, and that command's options.

    The options map every spelling of an option to all its spellings. The command is looked up
    in this installation, so a typo fails here rather than on the cluster. Options are None
    when the line starts with an option (it is then submitted as is).
    """
    path: list[str] = []
    # typer ships its own click, so groups are recognised by their `commands` table.
    for token in args:
        subcommands = getattr(command, "commands", None)
        if not isinstance(subcommands, dict):
            break
        if token.startswith("-"):
            return len(path), None
        if token not in subcommands:
            raise InputError(f"unknown rpdist command: {' '.join(path + [token])}")
        path.append(token)
        command = subcommands[token]
    if isinstance(getattr(command, "commands", None), dict):
        raise InputError(f"incomplete rpdist command: {' '.join(path)}")
    if path[:1] == ["submit"]:
        raise InputError("a submitted job cannot itself run `rpdist submit`")
    options: dict[str, tuple[str, ...]] = {}
    for param in command.params:
        names = (*param.opts, *param.secondary_opts)
        for name in names:
            if name.startswith("-"):
                options[name] = names
    return len(path), options
