"""MNIST convolutional networks.

* :class:`MnistSmallCNN`: the MNIST net of the ATLAS paper (seeds/003), which is the Madry et al.
  (2018) ``mnist_challenge`` model: conv 32 5x5 -> ReLU -> maxpool 2 -> conv 64 5x5 -> ReLU ->
  maxpool 2 -> FC 1024 -> ReLU -> FC, SAME padding (3,274,634 parameters for 10 classes).
* :class:`MnistCNN4`: the TRADES (Zhang et al. 2019) ``SmallCNN`` used by RT/SRT (seeds/004) and the
  thesis' "standard CNN" (4 conv + 3 FC, as in Carlini & Wagner 2017): conv 32 3x3, conv 32 3x3,
  maxpool 2, conv 64 3x3, conv 64 3x3, maxpool 2, FC 200, FC 200, FC, ReLU everywhere, VALID
  padding (28 -> 26 -> 24 -> 12 -> 10 -> 8 -> 4; 312,202 parameters for 10 classes).
* :class:`MnistFastATNet`: the MNIST net of Wong et al. (2020, "Fast is better than free"), from
  Wong & Kolter (2018): conv 16 4x4 stride 2 -> ReLU -> conv 32 4x4 stride 2 -> ReLU -> FC 100 ->
  ReLU -> FC, padding 1 (28 -> 14 -> 7; 166,406 parameters for 10 classes).

All take NHWC float images in [0, 1] and flatten in NHWC (H, W, C) order, which differs from the
PyTorch (C, H, W) order; permute the first FC kernel when porting PyTorch weights.

Named features (``feature_names``, read with :func:`advjax.models.forward`), shapes for 28x28
inputs:

=================  ==================  ==================  ==================
name               MnistSmallCNN       MnistCNN4           MnistFastATNet
=================  ==================  ==================  ==================
``block1``         [B, 14, 14, 32]     [B, 12, 12, 32]     [B, 14, 14, 16]
``block2``         [B, 7, 7, 64]       [B, 4, 4, 64]       [B, 7, 7, 32]
``last_conv``      [B, 7, 7, 64]       [B, 4, 4, 64]       [B, 7, 7, 32]
``penultimate``    [B, 1024]           [B, 200]            [B, 100]
=================  ==================  ==================  ==================

``block<i>`` is the output of the i-th convolutional block (its convolutions, ReLUs and max-pool);
``last_conv`` is the last block's output, the map the classifier flattens (ADR's CNN latent, thesis
supp. Sec. 2: "Generator ... MaxPool -> Flatten"); ``penultimate`` is the input of the last dense
layer.
"""

from __future__ import annotations

from typing import ClassVar

import flax.linen as nn
import jax.numpy as jnp

from advjax.models import canonical_conv
from advjax.models.checks import check_images
from advjax.models.functional import FEATURE_COLLECTION
from advjax.models.normalize import IDENTITY_MEAN, IDENTITY_STD, normalize

MNIST_FEATURES = ("block1", "block2", "last_conv", "penultimate")


def _conv(features: int, kernel: int, padding: str, name: str) -> nn.Conv:
    """A stride-1 conv whose input gradient stays on XLA:CPU's fast path inside attack loops."""
    return nn.Conv(
        features,
        (kernel, kernel),
        padding=padding,
        name=name,
        conv_general_dilated=canonical_conv.conv_general_dilated,
    )


def _max_pool(x: jnp.ndarray) -> jnp.ndarray:
    """2x2 max pooling, stride 2, VALID, written as reshape + max.

    Same forward as ``nn.max_pool``; its gradient is a mask instead of XLA:CPU's
    select-and-scatter, which allocates full-size index arrays per call (about 55 MiB per PGD
    step here) and made unrolled attacks 17% slower (results/benchmark_pgd.md).
    """
    b, h, w, c = x.shape
    x = x[:, : h // 2 * 2, : w // 2 * 2]
    return x.reshape(b, h // 2, 2, w // 2, 2, c).max(axis=(2, 4))


class _MnistNet(nn.Module):
    """Shared attributes and input handling of the MNIST networks.

    Attributes:
      num_classes: number of output logits.
      mean, std: per-channel normalisation applied first (identity by default).
      input_hw: required ``(height, width)``; ``None`` accepts any size (FC sizes follow it).
    """

    num_classes: int = 10
    mean: tuple[float, ...] = IDENTITY_MEAN
    std: tuple[float, ...] = IDENTITY_STD
    input_hw: tuple[int, int] | None = (28, 28)

    feature_names: ClassVar[tuple[str, ...]] = MNIST_FEATURES

    def _record(self, name: str, value: jnp.ndarray) -> None:
        """Record a named feature (a no-op unless ``forward`` requested features)."""
        self.sow(FEATURE_COLLECTION, name, value)

    def _blocks_done(self, block1: jnp.ndarray, block2: jnp.ndarray) -> jnp.ndarray:
        """Record the two conv-block outputs and return the flattened last one."""
        self._record("block1", block1)
        self._record("block2", block2)
        self._record("last_conv", block2)
        return block2.reshape((block2.shape[0], -1))

    def _inputs(self, x: jnp.ndarray) -> jnp.ndarray:
        """Checks one-channel NHWC images of ``input_hw`` and normalises them."""
        check_images(x, expected_hw=self.input_hw, channels=1)
        return normalize(x, self.mean, self.std)


class MnistSmallCNN(_MnistNet):
    """Madry et al. ``mnist_challenge`` CNN (2 conv + 2 FC), the ATLAS MNIST model."""

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool = False) -> jnp.ndarray:
        del train  # no BatchNorm or dropout
        x = self._inputs(x)
        block1 = _max_pool(nn.relu(_conv(32, 5, "SAME", "conv1")(x)))
        block2 = _max_pool(nn.relu(_conv(64, 5, "SAME", "conv2")(block1)))
        x = self._blocks_done(block1, block2)
        features = nn.relu(nn.Dense(1024, name="fc1")(x))
        logits = nn.Dense(self.num_classes, name="fc2")(features)
        self._record("penultimate", features)
        return logits


class MnistCNN4(_MnistNet):
    """TRADES ``SmallCNN`` (4 conv + 3 FC, VALID padding), the RT/SRT and thesis MNIST model.

    ``input_hw=None`` accepts any size of at least 12x12.
    """

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool = False) -> jnp.ndarray:
        del train  # no BatchNorm or dropout
        x = self._inputs(x)
        x = nn.relu(_conv(32, 3, "VALID", "conv1")(x))
        x = nn.relu(_conv(32, 3, "VALID", "conv2")(x))
        block1 = _max_pool(x)
        x = nn.relu(_conv(64, 3, "VALID", "conv3")(block1))
        x = nn.relu(_conv(64, 3, "VALID", "conv4")(x))
        block2 = _max_pool(x)
        x = self._blocks_done(block1, block2)
        x = nn.relu(nn.Dense(200, name="fc1")(x))
        features = nn.relu(nn.Dense(200, name="fc2")(x))
        logits = nn.Dense(self.num_classes, name="fc3")(features)
        self._record("penultimate", features)
        return logits


class MnistFastATNet(_MnistNet):
    """Wong et al. (2020) fast-AT MNIST net (2 strided conv + 2 FC), 166k parameters."""

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool = False) -> jnp.ndarray:
        del train  # no BatchNorm or dropout
        x = self._inputs(x)
        pad = ((1, 1), (1, 1))
        block1 = nn.relu(nn.Conv(16, (4, 4), strides=2, padding=pad, name="conv1")(x))
        block2 = nn.relu(nn.Conv(32, (4, 4), strides=2, padding=pad, name="conv2")(block1))
        x = self._blocks_done(block1, block2)
        features = nn.relu(nn.Dense(100, name="fc1")(x))
        logits = nn.Dense(self.num_classes, name="fc2")(features)
        self._record("penultimate", features)
        return logits
