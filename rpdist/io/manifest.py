"""One manifest schema for every run and sweep: ``OUT/RUN_ID/manifest.json``.

``config`` is the run's identity: a run directory resumes only under an equal ``config``. The
rest records what a reader needs to trust or reproduce the numbers: the package versions, the
dataset's and the models' SHA-256, the device and the resolved batch size, and the timings.
``details`` holds what only one analysis has (its plan, forward samples, attribute scale, …).
"""

from __future__ import annotations

import platform
import sys
from importlib import metadata
from typing import Literal

from pydantic import BaseModel, ConfigDict

MANIFEST_VERSION = 1
VERSIONED = ("rpdist", "torch", "ray", "numpy", "scipy", "pyarrow", "pandas", "opacus", "pydantic")


class Manifest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    manifest_version: int = MANIFEST_VERSION
    analysis: str
    status: Literal["running", "complete"]
    config: dict
    command: list[str]
    versions: dict[str, str | None]
    dataset: dict = {}
    models: dict[str, dict] = {}
    device: dict = {}
    timings: dict = {}
    details: dict = {}


def new_manifest(analysis: str, config: dict, **fields) -> dict:
    """A validated manifest as a JSON-ready dict, stamped with this process's command and versions."""
    fields.setdefault("status", "running")
    fields.setdefault("command", list(sys.argv))
    fields.setdefault("versions", versions())
    device = dict(fields.pop("device", {}))
    device.setdefault("platform", platform.platform())
    return Manifest(analysis=analysis, config=config, device=device, **fields).model_dump(mode="json")


def versions() -> dict:
    out = {"python": platform.python_version()}
    for name in VERSIONED:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def recorded_models(manifest: dict | None, names) -> dict[str, str]:
    """Role -> sha256 of the models among ``names`` that a manifest recorded: what a resume must run on again
    (models trained on demand differ from one machine to the next). Older manifests lack some roles; those
    are left out rather than compared."""
    models = (manifest or {}).get("models") or {}
    return {name: models[name]["sha256"] for name in names if (models.get(name) or {}).get("sha256")}


def dpsgd_name(epsilon: float) -> str:
    """The name a manifest records the DP-SGD model of ``epsilon`` under (beside target, eval, ...)."""
    return f"dpsgd eps={epsilon:g}"
