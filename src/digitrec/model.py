"""Model architectures, registered by name: ``create_model("digitnet")``.

Every architecture takes only JSON-friendly constructor arguments, which the registry
stores in the manifest beside the weights, so a model is rebuilt from its folder alone.
Inputs are normalised 1x28x28 images; outputs are 10 digit logits, then, for a model
trained to reject (``classes=12``), "not a digit" and "several digits" (rejection.py).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from digitrec.errors import ModelNotFound
from digitrec.rejection import DIGIT_CLASSES

IMAGE_SIZE = 28

_ARCHITECTURES: dict[str, Callable[..., nn.Module]] = {}


def register_model(name: str) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Class decorator: make an architecture buildable by ``create_model(name)``."""

    def add(factory: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _ARCHITECTURES:
            raise ValueError(f"architecture {name!r} is registered twice")
        _ARCHITECTURES[name] = factory
        return factory

    return add


def architectures() -> list[str]:
    return sorted(_ARCHITECTURES)


def create_model(name: str, **kwargs: Any) -> nn.Module:
    """Build a registered architecture with the given constructor arguments."""
    try:
        factory = _ARCHITECTURES[name]
    except KeyError:
        known = ", ".join(architectures())
        raise ModelNotFound(f"unknown architecture {name!r} (known: {known})") from None
    return factory(**kwargs)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def conv_bn(c_in: int, c_out: int, kernel: int, stride: int = 1, padding: int = 0) -> nn.Sequential:
    """Convolution (no bias: the batch norm has one), batch norm, ReLU."""
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, kernel, stride=stride, padding=padding, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    )


@register_model("digitnet")
class DigitNet(nn.Module):
    """Our default: two stages of (3x3, 3x3, strided 5x5) conv-BN-ReLU, then a small head.

    The strided 5x5 convolution is a learnable pooling; dropout after each stage and in
    the head, with heavy batched augmentation, keeps this ~0.3M-parameter model from
    overfitting MNIST. Spatial sizes: 28 -> 26 -> 24 -> 12 -> 10 -> 8 -> 4.
    """

    def __init__(
        self,
        widths: tuple[int, int] | list[int] = (32, 64),
        hidden: int = 256,
        dropout: float = 0.4,
        classes: int = DIGIT_CLASSES,
    ) -> None:
        super().__init__()
        self.args = {"widths": list(widths), "hidden": hidden, "dropout": dropout}
        self.args["classes"] = classes  # older manifests have no such key: 10
        w1, w2 = widths
        self.features = nn.Sequential(
            conv_bn(1, w1, 3),
            conv_bn(w1, w1, 3),
            conv_bn(w1, w1, 5, stride=2, padding=2),
            nn.Dropout(dropout),
            conv_bn(w1, w2, 3),
            conv_bn(w2, w2, 3),
            conv_bn(w2, w2, 5, stride=2, padding=2),
            nn.Dropout(dropout),
        )
        side = self._feature_side()
        self.head = nn.Sequential(
            nn.Flatten(),
            nn.Linear(w2 * side * side, hidden, bias=False),
            nn.BatchNorm1d(hidden),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(hidden, classes),
        )

    def _feature_side(self) -> int:
        with torch.no_grad():
            return int(self.features.eval()(torch.zeros(1, 1, IMAGE_SIZE, IMAGE_SIZE)).shape[-1])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


@register_model("tutorialnet")
class TutorialNet(nn.Module):
    """The baseline of PyTorch's MNIST example and the Flask tutorials built on it.

    conv3x3(32) - ReLU - conv3x3(64) - ReLU - maxpool 2x2 - dropout - fc 128 - dropout - fc 10.
    """

    def __init__(
        self, dropout1: float = 0.25, dropout2: float = 0.5, classes: int = DIGIT_CLASSES
    ) -> None:
        super().__init__()
        self.args = {"dropout1": dropout1, "dropout2": dropout2, "classes": classes}
        self.net = nn.Sequential(
            nn.Conv2d(1, 32, 3),
            nn.ReLU(inplace=True),
            nn.Conv2d(32, 64, 3),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.Dropout(dropout1),
            nn.Flatten(),
            nn.LazyLinear(128),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout2),
            nn.Linear(128, classes),
        )
        self.net(torch.zeros(1, 1, IMAGE_SIZE, IMAGE_SIZE))  # materialise the lazy layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def model_args(model: nn.Module) -> dict[str, Any]:
    """The constructor arguments a registered model was built with."""
    args = getattr(model, "args", None)
    if not isinstance(args, dict):
        raise TypeError(f"{type(model).__name__} does not record its constructor arguments")
    return dict(args)
