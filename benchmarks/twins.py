"""Plain-``flax.linen`` twins of the advjax zoo models, for speed benchmarks (issue 21).

Each twin is the zoo model "as a user would write it": ``nn.Conv`` (the default
``conv_general_dilated``, none of advjax's canonical convolutions),
``nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5)``, ``nn.Dense``,
``nn.max_pool``, global average pooling with ``jnp.mean``, the input normalisation written inline,
no ``sow`` and no advjax imports. The submodule ``name=``s are the zoo's, so the zoo's variables
(``params`` and ``batch_stats``) load into the twin unchanged and the logits agree to float
precision (``tests/test_twins.py``):

* ``mnist_small``: :class:`PlainSmallCNN` (Madry et al. conv 32 5x5 SAME, maxpool, conv 64 5x5
  SAME, maxpool, FC 1024, FC).
* ``mnist_cnn4``: :class:`PlainCNN4` (TRADES SmallCNN: 4 VALID 3x3 convs, 2 maxpools, 3 FC).
* ``mnist_fast_at``: :class:`PlainFastAT` (Wong et al. fast-AT net: two 4x4 stride-2 convs, 2 FC).
* ``resnet20``: :class:`PlainResNet20` (post-activation CIFAR ResNet-(6n+2); the 1x1 downsampling
  shortcut convolution has a bias, as in the zoo's Keras ``resnet_v1`` layout).
* ``preact_resnet18``: :class:`PlainPreActResNet18` (Wong et al. PreAct-ResNet-18).
* ``resnet18``: :class:`PlainResNet18` (kuangliu/pytorch-cifar ResNet-18: post-activation blocks,
  conv 1x1 + BatchNorm projection shortcuts).
* ``wide_resnet``: :class:`PlainWideResNet` (TRADES WideResNet-``depth``-``width``).

Every twin takes the zoo model's constructor kwargs (``num_classes``, ``mean``, ``std``, and
``depth``/``width``/``bn_axis_name``/``input_hw`` where the zoo model has them) and is called as
``twin.apply(variables, x, train=False)`` on NHWC images in [0, 1]. :data:`TWINS` maps zoo names
to twin classes; :func:`twin_model_fn` gives the hashable inference-mode ``model_fn(variables, x)
-> logits`` of a twin.

No ``from __future__ import annotations`` here: Flax modules are dataclasses, and with string
annotations ``dataclasses`` looks the defining module up in ``sys.modules``, which fails when the
file is loaded with ``importlib`` without registering it (as the tests and benchmarks do).
"""

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2471, 0.2435, 0.2616)


def _normalize(x, mean, std):
    """``(x - mean) / std``, skipped for the identity (as the zoo does)."""
    if all(m == 0.0 for m in mean) and all(s == 1.0 for s in std):
        return x
    return (x - jnp.asarray(mean, x.dtype)) / jnp.asarray(std, x.dtype)


# --- MNIST -----------------------------------------------------------------------------------


class PlainSmallCNN(nn.Module):
    """``mnist_small`` in plain Flax: conv 5x5 SAME, nn.max_pool, dense."""

    num_classes: int = 10
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)
    input_hw: tuple[int, int] | None = (28, 28)  # accepted for the zoo's kwargs; not checked

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = _normalize(x, self.mean, self.std)
        x = nn.relu(nn.Conv(32, (5, 5), padding="SAME", name="conv1")(x))
        x = nn.max_pool(x, (2, 2), (2, 2))
        x = nn.relu(nn.Conv(64, (5, 5), padding="SAME", name="conv2")(x))
        x = nn.max_pool(x, (2, 2), (2, 2)).reshape(x.shape[0], -1)
        x = nn.relu(nn.Dense(1024, name="fc1")(x))
        return nn.Dense(self.num_classes, name="fc2")(x)


class PlainCNN4(nn.Module):
    """``mnist_cnn4`` as a user would write it: nn.Conv and nn.max_pool."""

    num_classes: int = 10
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)
    input_hw: tuple[int, int] | None = (28, 28)  # accepted for the zoo's kwargs; not checked

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = _normalize(x, self.mean, self.std)
        x = nn.relu(nn.Conv(32, (3, 3), padding="VALID", name="conv1")(x))
        x = nn.relu(nn.Conv(32, (3, 3), padding="VALID", name="conv2")(x))
        x = nn.max_pool(x, (2, 2), (2, 2))
        x = nn.relu(nn.Conv(64, (3, 3), padding="VALID", name="conv3")(x))
        x = nn.relu(nn.Conv(64, (3, 3), padding="VALID", name="conv4")(x))
        x = nn.max_pool(x, (2, 2), (2, 2)).reshape(x.shape[0], -1)
        x = nn.relu(nn.Dense(200, name="fc1")(x))
        x = nn.relu(nn.Dense(200, name="fc2")(x))
        return nn.Dense(self.num_classes, name="fc3")(x)


class PlainFastAT(nn.Module):
    """The fast-AT MNIST net (``mnist_fast_at``: two strided 4x4 convs) in plain Flax."""

    num_classes: int = 10
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)
    input_hw: tuple[int, int] | None = (28, 28)  # accepted for the zoo's kwargs; not checked

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = _normalize(x, self.mean, self.std)
        pad = ((1, 1), (1, 1))
        x = nn.relu(nn.Conv(16, (4, 4), strides=2, padding=pad, name="conv1")(x))
        x = nn.relu(nn.Conv(32, (4, 4), strides=2, padding=pad, name="conv2")(x))
        x = nn.relu(nn.Dense(100, name="fc1")(x.reshape(x.shape[0], -1)))
        return nn.Dense(self.num_classes, name="fc2")(x)


# --- CIFAR residual networks -----------------------------------------------------------------
# Convolutions: no bias, PyTorch-style padding k // 2 (written out, since Flax's "SAME" pads a
# strided conv differently: (0, 1) instead of (1, 1) for k=3, s=2 on even sizes).


def _conv(features, kernel, strides, name, use_bias=False):
    p = kernel // 2
    return nn.Conv(
        features,
        (kernel, kernel),
        strides=strides,
        padding=((p, p), (p, p)),
        use_bias=use_bias,
        name=name,
    )


def _bn(train, axis_name, name):
    return nn.BatchNorm(
        use_running_average=not train, momentum=0.9, epsilon=1e-5, axis_name=axis_name, name=name
    )


class PlainBasicBlock(nn.Module):
    """Post-activation block: relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))."""

    features: int
    strides: int = 1
    bn_axis_name: str | None = None

    @nn.compact
    def __call__(self, x, train: bool):
        shortcut = x
        y = _conv(self.features, 3, self.strides, "conv1")(x)
        y = nn.relu(_bn(train, self.bn_axis_name, "bn1")(y))
        y = _conv(self.features, 3, 1, "conv2")(y)
        y = _bn(train, self.bn_axis_name, "bn2")(y)
        if self.strides != 1 or x.shape[-1] != self.features:
            shortcut = _conv(self.features, 1, self.strides, "shortcut", use_bias=True)(x)
        return nn.relu(y + shortcut)


class PlainResNet20(nn.Module):
    """``resnet20`` in plain Flax (CIFAR ResNet-(6n+2), ``depth=20`` by default)."""

    num_classes: int = 10
    depth: int = 20
    mean: tuple[float, ...] = CIFAR10_MEAN
    std: tuple[float, ...] = CIFAR10_STD
    bn_axis_name: str | None = None

    @nn.compact
    def __call__(self, x, train: bool = False):
        if self.depth < 8 or (self.depth - 2) % 6 != 0:
            raise ValueError(f"ResNet depth must be 6n+2 with n >= 1, got {self.depth}")
        x = _normalize(x, self.mean, self.std)
        x = _conv(16, 3, 1, "conv_stem")(x)
        x = nn.relu(_bn(train, self.bn_axis_name, "bn_stem")(x))
        for stage, width in enumerate((16, 32, 64)):
            for block in range((self.depth - 2) // 6):
                strides = 2 if stage > 0 and block == 0 else 1
                name = f"stage{stage + 1}_block{block + 1}"
                x = PlainBasicBlock(width, strides, self.bn_axis_name, name=name)(x, train)
        return nn.Dense(self.num_classes, name="fc")(jnp.mean(x, axis=(1, 2)))


class PlainPreActBlock(nn.Module):
    """Pre-activation block; the 1x1 shortcut (when the shape changes) reads relu(bn1(x))."""

    features: int
    strides: int = 1
    bn_axis_name: str | None = None

    @nn.compact
    def __call__(self, x, train: bool):
        out = nn.relu(_bn(train, self.bn_axis_name, "bn1")(x))
        shortcut = x
        if self.strides != 1 or x.shape[-1] != self.features:
            shortcut = _conv(self.features, 1, self.strides, "shortcut")(out)
        y = _conv(self.features, 3, self.strides, "conv1")(out)
        y = nn.relu(_bn(train, self.bn_axis_name, "bn2")(y))
        return _conv(self.features, 3, 1, "conv2")(y) + shortcut


class PlainPreActResNet18(nn.Module):
    """``preact_resnet18`` in plain Flax."""

    num_classes: int = 10
    mean: tuple[float, ...] = CIFAR10_MEAN
    std: tuple[float, ...] = CIFAR10_STD
    bn_axis_name: str | None = None

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = _normalize(x, self.mean, self.std)
        x = _conv(64, 3, 1, "conv_stem")(x)
        for stage, width in enumerate((64, 128, 256, 512)):
            for block in range(2):
                strides = 2 if stage > 0 and block == 0 else 1
                name = f"stage{stage + 1}_block{block + 1}"
                x = PlainPreActBlock(width, strides, self.bn_axis_name, name=name)(x, train)
        x = nn.relu(_bn(train, self.bn_axis_name, "bn_final")(x))
        return nn.Dense(self.num_classes, name="fc")(jnp.mean(x, axis=(1, 2)))


class PlainProjectionBlock(nn.Module):
    """Post-activation block with a conv 1x1 + BN projection shortcut (ResNet-18)."""

    features: int
    strides: int = 1
    bn_axis_name: str | None = None

    @nn.compact
    def __call__(self, x, train: bool):
        shortcut = x
        y = _conv(self.features, 3, self.strides, "conv1")(x)
        y = nn.relu(_bn(train, self.bn_axis_name, "bn1")(y))
        y = _bn(train, self.bn_axis_name, "bn2")(_conv(self.features, 3, 1, "conv2")(y))
        if self.strides != 1 or x.shape[-1] != self.features:
            shortcut = _conv(self.features, 1, self.strides, "shortcut_conv")(x)
            shortcut = _bn(train, self.bn_axis_name, "shortcut_bn")(shortcut)
        return nn.relu(y + shortcut)


class PlainResNet18(nn.Module):
    """``resnet18`` in plain Flax."""

    num_classes: int = 10
    mean: tuple[float, ...] = CIFAR10_MEAN
    std: tuple[float, ...] = CIFAR10_STD
    bn_axis_name: str | None = None

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = _normalize(x, self.mean, self.std)
        x = nn.relu(_bn(train, self.bn_axis_name, "bn_stem")(_conv(64, 3, 1, "conv_stem")(x)))
        for stage, width in enumerate((64, 128, 256, 512)):
            for block in range(2):
                strides = 2 if stage > 0 and block == 0 else 1
                name = f"stage{stage + 1}_block{block + 1}"
                x = PlainProjectionBlock(width, strides, self.bn_axis_name, name=name)(x, train)
        return nn.Dense(self.num_classes, name="fc")(jnp.mean(x, axis=(1, 2)))


class PlainWideResNet(nn.Module):
    """``wide_resnet`` in plain Flax (TRADES WideResNet-``depth``-``width``, WRN-28-10 default).

    The blocks are :class:`PlainPreActBlock`: a TRADES block keeps the raw ``x`` as its shortcut
    exactly when it keeps its width and stride, and otherwise convolves ``relu(bn1(x))``.
    """

    num_classes: int = 10
    depth: int = 28
    width: int = 10
    mean: tuple[float, ...] = CIFAR10_MEAN
    std: tuple[float, ...] = CIFAR10_STD
    bn_axis_name: str | None = None

    @nn.compact
    def __call__(self, x, train: bool = False):
        if self.depth < 10 or (self.depth - 4) % 6 != 0 or self.width < 1:
            raise ValueError(
                f"WideResNet needs depth 6n+4 >= 10 and width >= 1, got depth={self.depth}, "
                f"width={self.width}"
            )
        x = _normalize(x, self.mean, self.std)
        x = _conv(16, 3, 1, "conv_stem")(x)
        for group, base in enumerate((16, 32, 64)):
            for block in range((self.depth - 4) // 6):
                strides = 2 if group > 0 and block == 0 else 1
                name = f"group{group + 1}_block{block + 1}"
                width = base * self.width
                x = PlainPreActBlock(width, strides, self.bn_axis_name, name=name)(x, train)
        x = nn.relu(_bn(train, self.bn_axis_name, "bn_final")(x))
        return nn.Dense(self.num_classes, name="fc")(jnp.mean(x, axis=(1, 2)))


#: Zoo model name -> plain-Flax twin class (same constructor kwargs, same variable tree).
TWINS: dict[str, Callable[..., nn.Module]] = {
    "mnist_small": PlainSmallCNN,
    "mnist_cnn4": PlainCNN4,
    "mnist_fast_at": PlainFastAT,
    "resnet20": PlainResNet20,
    "preact_resnet18": PlainPreActResNet18,
    "resnet18": PlainResNet18,
    "wide_resnet": PlainWideResNet,
}


def get_twin(name: str, **kwargs: Any) -> nn.Module:
    """The plain-Flax twin of zoo model ``name``, built with the zoo constructor ``kwargs``."""
    if name not in TWINS:
        raise ValueError(f"no plain-Flax twin of {name!r}; twins: {', '.join(TWINS)}")
    return TWINS[name](**kwargs)


@dataclasses.dataclass(frozen=True)
class TwinModelFn:
    """Hashable inference-mode ``model_fn(variables, x) -> logits``: ``module.apply(variables, x,
    train=False)``, nothing else (no canonicalisation). ``module`` is the twin, for ``init``."""

    module: nn.Module

    def __call__(self, variables: Mapping[str, Any], x: jax.Array) -> jax.Array:
        return self.module.apply(variables, x, train=False)


def twin_model_fn(name: str, **kwargs: Any) -> TwinModelFn:
    """The hashable inference-mode model function of the twin of zoo model ``name``."""
    return TwinModelFn(get_twin(name, **kwargs))


# --- A third-party model in raw lax ----------------------------------------------------------


def lax_fast_at(params: Mapping[str, Any], x: jax.Array) -> jax.Array:
    """``mnist_fast_at`` as a third-party JAX model: NCHW activations, OIHW kernels, raw
    ``lax.conv_general_dilated`` and the PyTorch flatten order (C, H, W), ``params`` a plain dict
    from :func:`lax_fast_at_params`. Takes NHWC images in [0, 1] like every advjax model."""
    nchw = ("NCHW", "OIHW", "NCHW")
    h = x.transpose(0, 3, 1, 2)
    for name in ("conv1", "conv2"):
        h = jax.lax.conv_general_dilated(
            h, params[name]["w"], (2, 2), ((1, 1), (1, 1)), dimension_numbers=nchw
        )
        h = jax.nn.relu(h + params[name]["b"][None, :, None, None])
    h = jax.nn.relu(h.reshape(h.shape[0], -1) @ params["fc1"]["w"] + params["fc1"]["b"])
    return h @ params["fc2"]["w"] + params["fc2"]["b"]


def lax_fast_at_params(variables: Mapping[str, Any]) -> dict:
    """The zoo ``mnist_fast_at`` variables in :func:`lax_fast_at`'s layout (kernels HWIO ->
    OIHW; the first dense layer's rows from the (H, W, C) to the (C, H, W) flatten order)."""
    p = variables["params"]
    out = {
        name: {"w": jnp.transpose(p[name]["kernel"], (3, 2, 0, 1)), "b": p[name]["bias"]}
        for name in ("conv1", "conv2")
    }
    fc1 = p["fc1"]["kernel"]  # [7 * 7 * 32, 100], rows in (H, W, C) order
    channels = out["conv2"]["w"].shape[0]
    side = int(round((fc1.shape[0] // channels) ** 0.5))
    fc1 = fc1.reshape(side, side, channels, -1).transpose(2, 0, 1, 3).reshape(fc1.shape)
    out["fc1"] = {"w": fc1, "b": p["fc1"]["bias"]}
    out["fc2"] = {"w": p["fc2"]["kernel"], "b": p["fc2"]["bias"]}
    return out
