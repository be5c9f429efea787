"""Flax (linen) image classifiers and the model-function contract of DESIGN.md.

Every model takes NHWC float32 images in [0, 1] (normalisation lives inside the model) and is called
as ``model.apply(variables, x, train=False)``, returning logits ``[batch, num_classes]``.

Named features. Every zoo model records named intermediate layers with
``self.sow("intermediates", name, value)`` and lists them in the class attribute ``feature_names``;
all record at least ``"last_conv"`` (the output of the last convolutional block, ``[B, H, W, C]``,
the map the head pools or flattens) and ``"penultimate"`` (the input of the last dense layer,
``[B, D]``), plus per-block outputs (``block<i>``, ``stage<i>`` or ``group<i>``; see each module).
Recording is free unless requested: ``intermediates`` is mutable only when features are asked for.

Speed on CPU: ``canonicalize(fn)`` rewrites a model's convolutions into XLA:CPU's fast form with
the same values and derivatives; attacks and ``forward`` apply it by themselves on CPU, and
``canonicalization(False)`` switches that off (``advjax/models/canonicalize.py``).

Functional API (:mod:`advjax.models.functional`):

* ``forward(model, variables, x, *, train, features=()) -> Forward(logits, features, batch_stats)``:
  logits, ``{name: value}`` for the requested names (both modes) and, in training mode, the updated
  BatchNorm running statistics (``{}`` otherwise). An unknown name raises ``ValueError`` listing the
  recorded ones; models that record nothing work as long as no feature is requested.
* ``apply_train(model, variables, x) -> (logits, new_batch_stats)``: training mode.
* ``make_model_fn(model, train=False)``: the hashable DESIGN.md ``model_fn(variables, x) ->
  logits``; ``train=True`` uses batch statistics and drops their update (an adversary generated
  with BatchNorm in training mode, variables untouched).
* ``make_feature_fn(model, features=("penultimate",), train=False)``: hashable
  ``feature_fn(variables, x) -> (logits, {name: value})``.

Models (``MODELS`` registry names):

* ``mnist_small``: :class:`MnistSmallCNN`, Madry et al. mnist_challenge / ATLAS MNIST net.
* ``mnist_fast_at``: :class:`MnistFastATNet`, Wong et al. (2020) fast-AT MNIST net.
* ``mnist_cnn4``: :class:`MnistCNN4`, TRADES SmallCNN (RT/SRT, thesis "standard CNN").
* ``resnet20``: :class:`ResNet20`, He et al. CIFAR ResNet-20 (ADR/ASCL ResNet-20 setting).
* ``preact_resnet18``: :class:`PreActResNet18`, Wong et al. fast-AT PreAct-ResNet-18.
* ``resnet18``: :class:`ResNet18`, the common CIFAR ResNet-18 (kuangliu/pytorch-cifar, RobustBench).
* ``wide_resnet``: :class:`WideResNet` (``depth=28, width=10`` by default), TRADES WideResNet.

PyTorch checkpoints: :func:`advjax.models.torch_import.convert_state_dict` turns a PyTorch
``state_dict`` (RobustBench / TRADES WideResNet, PreAct-ResNet-18, ResNet-18, the MNIST CNNs) into
one of these models and its variables; :mod:`advjax.models.saved_model` stores a model as JSON plus
msgpack that loads without PyTorch.
"""

from __future__ import annotations

from collections.abc import Callable

import flax.linen as nn

from advjax.models.canonicalize import canonicalization, canonicalize
from advjax.models.checks import check_images
from advjax.models.ensemble import Ensemble, ensemble_variables, member, member_variables
from advjax.models.functional import (
    FEATURE_COLLECTION,
    FeatureFn,
    Forward,
    ModelFn,
    apply_train,
    forward,
    init_variables,
    make_feature_fn,
    make_model_fn,
    param_count,
)
from advjax.models.mnist import MnistCNN4, MnistFastATNet, MnistSmallCNN
from advjax.models.normalize import CIFAR10_MEAN, CIFAR10_STD, normalize
from advjax.models.resnet import PreActResNet18, ResNet18, ResNet20
from advjax.models.wide_resnet import WideResNet

MODELS: dict[str, Callable[..., nn.Module]] = {
    "mnist_small": MnistSmallCNN,
    "mnist_cnn4": MnistCNN4,
    "mnist_fast_at": MnistFastATNet,
    "resnet20": ResNet20,
    "preact_resnet18": PreActResNet18,
    "resnet18": ResNet18,
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
    "canonicalization",
    "canonicalize",
    "Ensemble",
    "ensemble_variables",
    "member",
    "member_variables",
    "CIFAR10_MEAN",
    "CIFAR10_STD",
    "FEATURE_COLLECTION",
    "MODELS",
    "FeatureFn",
    "Forward",
    "MnistCNN4",
    "MnistFastATNet",
    "MnistSmallCNN",
    "ModelFn",
    "PreActResNet18",
    "ResNet18",
    "ResNet20",
    "WideResNet",
    "apply_train",
    "check_images",
    "forward",
    "get_model",
    "init_variables",
    "make_feature_fn",
    "make_model_fn",
    "normalize",
    "param_count",
]
