"""Named model factories, so that a state dict can be rebuilt without unpickling any code.

A :class:`rpdist.models.refs.ModelRef` of kind ``state_dict`` carries only tensors plus an
architecture name and JSON-able keyword arguments; this registry turns the name back into a
module. Every module maps float32 ``[B, *input_shape]`` to logits ``[B, C]`` and is
TorchScript-scriptable, so it can also be exported as a self-describing program.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable

import torch
from torch import nn
from torch.nn import functional as F

from rpdist.errors import InputError

__all__ = ["MLP", "DigitsCNN", "LinearClassifier", "InPlaceReLU", "MaxPool2x2", "build", "names", "with_torch_layers"]


class InPlaceReLU(nn.Module):
    """ReLU that overwrites its input at inference, saving an allocation per layer (same values).

    Replicas spend nearly all their time in forward passes, and on the mnist5k CNN ReLU took 18% of
    it (py-spy); in place it skips an allocation and a pass over fresh memory. With gradients on it
    is ``torch.relu``, as ``nn.ReLU``.
    Every use here follows a convolution or linear layer whose output nothing else reads.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x) if torch.is_grad_enabled() else x.relu_()


def with_torch_layers(model: nn.Module) -> nn.Module:
    """A copy of ``model`` with ``nn.MaxPool2d(2)`` and ``nn.ReLU()`` in place of rpdist's inference layers:
    the reference that tests and ``benchmarks/inference_layers.py`` hold those layers to."""
    import copy

    model = copy.deepcopy(model)
    for parent in list(model.modules()):
        for name, child in parent.named_children():
            if isinstance(child, MaxPool2x2):
                setattr(parent, name, nn.MaxPool2d(2))
            elif isinstance(child, InPlaceReLU):
                setattr(parent, name, nn.ReLU())
    return model


class MLP(nn.Module):
    """Linear/ReLU stack over flattened inputs (the insurance default model)."""

    def __init__(self, in_features: int, num_classes: int, hidden: tuple[int, ...] = (64, 64)):
        super().__init__()
        layers: list[nn.Module] = []
        width = in_features
        for size in hidden:
            layers += [nn.Linear(width, size), InPlaceReLU()]
            width = size
        layers.append(nn.Linear(width, num_classes))
        self.layers = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(torch.flatten(x, 1))


class MaxPool2x2(nn.Module):
    """``nn.MaxPool2d(2)`` with the same values, about ten times faster on CPU at inference.

    torch's pooling kernel is slow on the small planes these models pool (8x8, 14x14) and took a
    quarter of a digits replica's time; two elementwise maxima over strided halves give the same numbers
    (NaN propagates in both). With gradients on it is ``max_pool2d`` itself, whose backward sends a
    tie's gradient to one input where ``maximum`` would split it, so training is unchanged.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled():
            return F.max_pool2d(x, 2)
        x = x[..., : x.shape[-2] // 2 * 2, : x.shape[-1] // 2 * 2]  # floor, as max_pool2d does
        rows = torch.maximum(x[..., 0::2, :], x[..., 1::2, :])
        return torch.maximum(rows[..., 0::2], rows[..., 1::2])


class DigitsCNN(nn.Module):
    """Two 3x3 convolutions, one 2x2 max-pool and two linear layers: enough for 8x8 digits. For 28x28
    MNIST the first convolution takes ``stride`` 2, so the network costs about what it costs at 14x14."""

    def __init__(self, num_classes: int = 10, channels: int = 1, side: int = 8, stride: int = 1):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(channels, 16, kernel_size=3, padding=1, stride=stride),
            InPlaceReLU(),
            nn.Conv2d(16, 32, kernel_size=3, padding=1),
            InPlaceReLU(),
            MaxPool2x2(),
        )
        pooled = ((side - 1) // stride + 1) // 2
        self.classifier = nn.Sequential(
            nn.Linear(32 * pooled * pooled, 64),
            InPlaceReLU(),
            nn.Linear(64, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.features(x), 1))


class LinearClassifier(nn.Module):
    """A single affine map over the flattened input: the simplest certifiable baseline."""

    def __init__(self, in_features: int, num_classes: int):
        super().__init__()
        self.linear = nn.Linear(in_features, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(torch.flatten(x, 1))


def _positive_int(arch: str, key: str, value, minimum: int = 1) -> int:
    # JSON round trips give ints; bools and floats are almost always a mistake in a spec.
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise InputError(f"architecture {arch!r}: {key} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _mlp(in_features, num_classes, hidden=(64, 64)) -> nn.Module:
    in_features = _positive_int("mlp", "in_features", in_features)
    num_classes = _positive_int("mlp", "num_classes", num_classes, 2)
    if isinstance(hidden, (str, bytes)) or not isinstance(hidden, (list, tuple)):
        raise InputError(f"architecture 'mlp': hidden must be a list of layer widths, got {hidden!r}")
    widths = tuple(_positive_int("mlp", "hidden", h) for h in hidden)
    return MLP(in_features, num_classes, widths)


def _cnn(num_classes=10, channels=1, side=8, stride=1) -> nn.Module:
    num_classes = _positive_int("cnn", "num_classes", num_classes, 2)
    channels = _positive_int("cnn", "channels", channels)
    side = _positive_int("cnn", "side", side, 2)
    stride = _positive_int("cnn", "stride", stride)
    if ((side - 1) // stride + 1) // 2 < 1:
        raise InputError(f"architecture 'cnn': side {side} at stride {stride} leaves nothing to pool")
    return DigitsCNN(num_classes, channels, side, stride)


def _linear(in_features, num_classes) -> nn.Module:
    in_features = _positive_int("linear", "in_features", in_features)
    num_classes = _positive_int("linear", "num_classes", num_classes, 2)
    return LinearClassifier(in_features, num_classes)


_REGISTRY: dict[str, Callable[..., nn.Module]] = {"mlp": _mlp, "cnn": _cnn, "linear": _linear}


def names() -> list[str]:
    """The architecture names that :func:`build` accepts, sorted."""
    return sorted(_REGISTRY)


def build(name: str, **kwargs) -> nn.Module:
    """Instantiate architecture ``name`` with freshly initialised weights.

    Keyword arguments are checked against the factory's signature so that a typo in a
    user-supplied ``arch_kwargs`` is a clear :class:`InputError`, not a ``TypeError`` traceback.
    """
    factory = _REGISTRY.get(name) if isinstance(name, str) else None
    if factory is None:
        raise InputError(f"unknown architecture {name!r}; known architectures: {', '.join(names())}")
    params = inspect.signature(factory).parameters
    unknown = sorted(set(kwargs) - set(params))
    if unknown:
        raise InputError(
            f"architecture {name!r} does not take {', '.join(unknown)}; it takes {', '.join(params)}"
        )
    missing = [p for p, spec in params.items() if spec.default is inspect.Parameter.empty and p not in kwargs]
    if missing:
        raise InputError(f"architecture {name!r} needs {', '.join(missing)}")
    return factory(**kwargs)
