"""WideResNet-depth-width for CIFAR (Zagoruyko & Komodakis 2016), in the TRADES layout.

This is the ``WideResNet`` of Zhang et al. (2019, TRADES) used for WRN-34-10 / WRN-28-10 results in
the thesis (spec/thesis_ch2_3.md) and seeds/003-004: a 3x3 conv stem with 16 filters, 3 groups of
n = (depth - 4) / 6 pre-activation basic blocks with 16k/32k/64k filters (k = width; stride 2 at the
start of groups 2 and 3), a final BN-ReLU, global average pooling (``avg_pool2d(out, 8)`` on 32x32
inputs) and a dense layer.

Blocks follow TRADES exactly: when the block keeps its width, the shortcut is the raw input ``x``;
when it changes width, both the residual branch and the 1x1 strided shortcut convolution read
``relu(bn1(x))``. WRN-34-10 has 46,160,474 parameters and WRN-28-10 36,479,194 (10 classes).

Named features (``feature_names``, read with :func:`advjax.models.forward`), shapes for 32x32 inputs
and width k: ``group1`` [B, 32, 32, 16k], ``group2`` [B, 16, 16, 32k], ``group3`` [B, 8, 8, 64k]
(the outputs of the three groups of blocks, before the final BN-ReLU), ``last_conv`` [B, 8, 8, 64k]
(after the final BN-ReLU, the map that is pooled) and ``penultimate`` [B, 64k] (the pooled vector,
input of the dense layer).
"""

from __future__ import annotations

from typing import ClassVar

import flax.linen as nn
import jax.numpy as jnp

from advjax.models.checks import check_images
from advjax.models.functional import FEATURE_COLLECTION
from advjax.models.layers import batch_norm, conv, global_avg_pool
from advjax.models.normalize import CIFAR10_MEAN, CIFAR10_STD, normalize


class WideBasicBlock(nn.Module):
    """TRADES WideResNet ``BasicBlock`` (pre-activation, no dropout)."""

    features: int
    strides: int = 1
    bn_axis_name: str | None = None

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool) -> jnp.ndarray:
        equal_in_out = x.shape[-1] == self.features and self.strides == 1
        out = nn.relu(batch_norm(train, self.bn_axis_name, name="bn1")(x))
        if equal_in_out:
            shortcut = x
        else:
            shortcut = conv(self.features, 1, self.strides, name="shortcut")(out)
        y = conv(self.features, 3, self.strides, name="conv1")(out)
        y = nn.relu(batch_norm(train, self.bn_axis_name, name="bn2")(y))
        y = conv(self.features, 3, 1, name="conv2")(y)
        return y + shortcut


class WideResNet(nn.Module):
    """WideResNet-``depth``-``width`` (defaults: WRN-28-10).

    Attributes:
      num_classes: number of output logits.
      depth: 6n+4 (e.g. 10, 16, 28, 34, 40); n blocks per group.
      width: widening factor k.
      mean, std: per-channel normalisation applied first (CIFAR-10 statistics by default).
      bn_axis_name: optional axis name for cross-device (synchronised) BatchNorm statistics.
    """

    num_classes: int = 10
    depth: int = 28
    width: int = 10
    mean: tuple[float, ...] = CIFAR10_MEAN
    std: tuple[float, ...] = CIFAR10_STD
    bn_axis_name: str | None = None

    feature_names: ClassVar[tuple[str, ...]] = (
        "group1", "group2", "group3", "last_conv", "penultimate",
    )  # fmt: skip

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool = False) -> jnp.ndarray:
        check_images(x, channels=3)
        if self.depth < 10 or (self.depth - 4) % 6 != 0:
            raise ValueError(
                f"WideResNet depth must be 6n+4 with n >= 1 (e.g. 28, 34), got {self.depth}"
            )
        if self.width < 1:
            raise ValueError(f"WideResNet width must be a positive integer, got {self.width}")
        n = (self.depth - 4) // 6
        x = normalize(x, self.mean, self.std)
        x = conv(16, 3, 1, name="conv_stem")(x)
        for group, base in enumerate((16, 32, 64)):
            for block in range(n):
                strides = 2 if group > 0 and block == 0 else 1
                x = WideBasicBlock(
                    base * self.width,
                    strides,
                    self.bn_axis_name,
                    name=f"group{group + 1}_block{block + 1}",
                )(x, train)
            self.sow(FEATURE_COLLECTION, f"group{group + 1}", x)
        x = nn.relu(batch_norm(train, self.bn_axis_name, name="bn_final")(x))
        self.sow(FEATURE_COLLECTION, "last_conv", x)
        features = global_avg_pool(x)
        self.sow(FEATURE_COLLECTION, "penultimate", features)
        return nn.Dense(self.num_classes, bias_init=nn.initializers.zeros, name="fc")(features)
