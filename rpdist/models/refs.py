"""Serialisable model references and safe model loading.

A Ray actor must rebuild the model on its own device from bytes, and those bytes must never be an
arbitrary pickle: a reference is either TorchScript (a program, not a pickle) or a plain state dict
read with ``torch.load(weights_only=True)`` plus a named architecture from
:mod:`rpdist.models.architectures`.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import torch

from rpdist.errors import InputError, first_line

TORCHSCRIPT = "torchscript"
STATE_DICT = "state_dict"


@contextlib.contextmanager
def _quiet_jit():
    """TorchScript is deprecated upstream but remains the one safe, self-describing model file."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*torch\.jit.* is deprecated.*")
        yield


def state_dict_bytes(state_dict) -> bytes:
    """A state dict as ``torch.save`` writes it (CPU tensors): the bytes a cached model file holds."""
    buffer = io.BytesIO()
    torch.save({k: v.detach().cpu() for k, v in state_dict.items()}, buffer)
    return buffer.getvalue()


def state_dict_sha256(state_dict) -> str:
    """The sha256 of a module's weights, equal to that of its cached file."""
    return hashlib.sha256(state_dict_bytes(state_dict)).hexdigest()


@dataclass(frozen=True)
class ModelRef:
    """What a replica needs to rebuild a model: a kind, bytes and (for state dicts) an architecture."""

    kind: str
    payload: bytes = field(repr=False)
    arch: str | None = None
    arch_kwargs: dict = field(default_factory=dict)

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.payload).hexdigest()

    def load(self, device: str | torch.device = "cpu") -> torch.nn.Module:
        """Rebuild the model in eval mode on ``device`` without unpickling anything arbitrary."""
        buffer = io.BytesIO(self.payload)
        if self.kind == TORCHSCRIPT:
            with _quiet_jit():
                model = torch.jit.load(buffer, map_location=device)
        elif self.kind == STATE_DICT:
            from rpdist.models.architectures import build

            state = torch.load(buffer, map_location=device, weights_only=True)
            model = build(self.arch, **self.arch_kwargs)
            model.load_state_dict(state)
            model.to(device)
        else:
            raise InputError(f"unknown model reference kind {self.kind!r}")
        return model.eval()

    @classmethod
    def from_state_dict(cls, arch: str, arch_kwargs: dict, state_dict) -> ModelRef:
        return cls(STATE_DICT, state_dict_bytes(state_dict), arch, dict(arch_kwargs))

    @classmethod
    def from_module(cls, module: torch.nn.Module, example_input: torch.Tensor) -> ModelRef:
        """Turn an in-memory module into TorchScript: scripted if possible, else traced."""
        module = module.eval()
        with _quiet_jit():
            try:
                program = torch.jit.script(module)
            except Exception:  # scripting rejects some Python; tracing covers plain forward passes
                with torch.no_grad():
                    program = torch.jit.trace(module, example_input, check_trace=False)
            buffer = io.BytesIO()
            torch.jit.save(program, buffer)
        return cls(TORCHSCRIPT, buffer.getvalue())


def load_model_file(path: str | Path, arch: str | None = None, arch_kwargs: dict | None = None) -> ModelRef:
    """Read a TorchScript file, or a state dict when ``arch`` names its architecture.

    A file written with ``torch.save(module)`` is a pickle of arbitrary objects and is refused.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"model file not found: {path}")
    payload = path.read_bytes()
    if arch is not None:
        try:
            state = torch.load(io.BytesIO(payload), map_location="cpu", weights_only=True)
        except Exception as exc:
            raise InputError(f"{path} is not a plain state dict loadable with weights_only=True ({first_line(exc)})") from None
        if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
            raise InputError(f"{path} does not hold a state dict of tensors")
        ref = ModelRef.from_state_dict(arch, arch_kwargs or {}, state)
        try:
            ref.load()
        except InputError:
            raise
        except Exception as exc:
            raise InputError(f"{path} does not fit architecture {arch!r}: {first_line(exc)}") from None
        return ref
    if not zipfile.is_zipfile(io.BytesIO(payload)):
        raise InputError(f"{path} is not a TorchScript file (not a zip archive)")
    with zipfile.ZipFile(io.BytesIO(payload)) as archive:
        names = archive.namelist()
    if not any(name.endswith("constants.pkl") or "/code/" in name for name in names):
        raise InputError(
            f"{path} is a pickled module or state dict, which rpdist never unpickles; "
            "export it with torch.jit.script/trace, or pass --arch for a state dict"
        )
    ref = ModelRef(TORCHSCRIPT, payload)
    try:
        ref.load()
    except Exception as exc:
        raise InputError(f"cannot read TorchScript model {path}: {first_line(exc)}") from None
    return ref
