"""rpdist: certify Robust Privacy with randomized smoothing, from a laptop to a Ray cluster.

The public API — :func:`certify` and :func:`predict` (CERTIFY / PREDICT of Cohen et al.),
:func:`load_dataset` and :func:`default_model` — is imported lazily, so that ``import rpdist``
and the torch-free modules (``rpdist.smoothing.stats``, ``rpdist.datasets.catalog``) stay light.
"""

from rpdist.errors import InputError, ModelError

__version__ = "0.1.0"

_LAZY = {
    "certify": "rpdist.smoothing.job",
    "predict": "rpdist.smoothing.job",
    "SmoothingConfig": "rpdist.smoothing.job",
    "load_dataset": "rpdist.datasets.catalog",
    "list_datasets": "rpdist.datasets.catalog",
    "default_model": "rpdist.models.zoo",
}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'rpdist' has no attribute {name!r}")


__all__ = ["InputError", "ModelError", "__version__", *_LAZY]
