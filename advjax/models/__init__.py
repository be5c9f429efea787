"""Flax (linen) image classifiers and the model-function contract of DESIGN.md.

Every model takes NHWC float32 images in [0, 1] (normalisation lives inside the model) and is called
as ``model.apply(variables, x, train=False, return_features=False)``, returning logits
``[batch, num_classes]`` or ``(logits, features)`` with the penultimate features ``[batch, D]``.

Models (``MODELS`` registry names):

* ``mnist_small``: :class:`MnistSmallCNN`, Madry et al. mnist_challenge / ATLAS MNIST net.
* ``mnist_fast_at``: :class:`MnistFastATNet`, Wong et al. (2020) fast-AT MNIST net.
* ``mnist_cnn4``: :class:`MnistCNN4`, TRADES SmallCNN (RT/SRT, thesis "standard CNN").
* ``resnet20``: :class:`ResNet20`, He et al. CIFAR ResNet-20 (ADR/ASCL ResNet-20 setting).
* ``preact_resnet18``: :class:`PreActResNet18`, Wong et al. fast-AT PreAct-ResNet-18.
* ``wide_resnet``: :class:`WideResNet` (``depth=28, width=10`` by default), TRADES WideResNet.
"""

from __future__ import annotations

from collections.abc import Callable

import flax.linen as nn

from advjax.models.checks import check_images
from advjax.models.functional import (
    FeatureFn,
    ModelFn,
    apply_train,
    init_variables,
    make_feature_fn,
    make_model_fn,
    param_count,
)
from advjax.models.mnist import MnistCNN4, MnistFastATNet, MnistSmallCNN
from advjax.models.normalize import CIFAR10_MEAN, CIFAR10_STD, normalize
from advjax.models.resnet import PreActResNet18, ResNet20
from advjax.models.wide_resnet import WideResNet

MODELS: dict[str, Callable[..., nn.Module]] = {
    "mnist_small": MnistSmallCNN,
    "mnist_cnn4": MnistCNN4,
    "mnist_fast_at": MnistFastATNet,
    "resnet20": ResNet20,
    "preact_resnet18": PreActResNet18,
    "wide_resnet": WideResNet,
}


def get_model(name: str, **kwargs) -> nn.Module:
    """Build the registered model ``name`` with constructor ``kwargs`` (e.g. ``num_classes``)."""
    try:
        factory = MODELS[name]
    except KeyError:
        valid = ", ".join(sorted(MODELS))
        raise ValueError(f"unknown model {name!r}; valid models: {valid}") from None
    return factory(**kwargs)


__all__ = [
    "CIFAR10_MEAN",
    "CIFAR10_STD",
    "MODELS",
    "FeatureFn",
    "MnistCNN4",
    "MnistFastATNet",
    "MnistSmallCNN",
    "ModelFn",
    "PreActResNet18",
    "ResNet20",
    "WideResNet",
    "apply_train",
    "check_images",
    "get_model",
    "init_variables",
    "make_feature_fn",
    "make_model_fn",
    "normalize",
    "param_count",
]
