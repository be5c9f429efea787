"""CIFAR residual networks: ResNet-20, ResNet-18 (post-activation) and PreAct-ResNet-18.

* :class:`ResNet20`: He et al. (2016), "Deep Residual Learning", Sec. 4.2 CIFAR-10 ResNet-(6n+2)
  with n=3: a 3x3 conv stem with 16 filters, then 3 stages of n basic blocks with 16/32/64 filters
  (stride 2 at the start of stages 2 and 3), global average pooling and a dense layer. Blocks are
  post-activation (conv-BN-ReLU-conv-BN, add, ReLU); the downsampling shortcut is a 1x1 strided
  convolution as in the Keras ``resnet_v1`` used by Pang et al. (2019), the thesis' ADR/ASCL
  ResNet-20 setting (spec/thesis_ch2_3.md).
* :class:`PreActResNet18`: He et al. (2016), "Identity Mappings in Deep Residual Networks", as used
  by Wong et al. (2020), "Fast is better than free" (``preact_resnet.py``): a 3x3 conv stem with 64
  filters, 4 stages of 2 pre-activation blocks (64/128/256/512, stride 2 from stage 2), a final
  BN-ReLU, global average pooling (``avg_pool2d(out, 4)`` on 32x32 inputs) and a dense layer.
  11,172,170 parameters for 10 classes. Two options cover the published variants (defaults: the
  layout above): ``preact_shortcut`` (the 1x1 projection shortcut reads ``relu(bn1(x))``, as in
  kuangliu/pytorch-cifar and RobustBench's ``PreActBlockV2`` / ``out_shortcut=True``; ``False``
  reads the raw block input ``x``, as in Wong et al.'s released code and RobustBench's default
  ``PreActBlock``) and ``final_bn`` (RobustBench's ``bn_before_fc``; ``False`` pools the last
  stage's output directly).
* :class:`ResNet18`: He et al. (2016a) ResNet-18 in the common CIFAR form (kuangliu/pytorch-cifar
  ``models/resnet.py``, RobustBench's ``ResNet18``): a 3x3 conv stem with 64 filters, stride 1,
  BN-ReLU and no max-pool, 4 stages of 2 post-activation basic blocks (64/128/256/512, stride 2
  from stage 2) whose projection shortcut is a 1x1 strided conv followed by BatchNorm, global
  average pooling (``avg_pool2d(out, 4)`` on 32x32 inputs) and a dense layer. 11,173,962
  parameters for 10 classes.

Inputs are NHWC float images in [0, 1]; CIFAR-10 normalisation is applied inside the model.

Named features (``feature_names``, read with :func:`advjax.models.forward`), shapes for 32x32
inputs:

* ResNet20: ``stage1`` [B, 32, 32, 16], ``stage2`` [B, 16, 16, 32], ``stage3`` [B, 8, 8, 64] (the
  outputs of the three stages of residual blocks), ``last_conv`` [B, 8, 8, 64] (the map that is
  globally average-pooled; equal to ``stage3``, blocks are post-activation), ``penultimate``
  [B, 64] (the pooled vector, input of the dense layer).
* PreActResNet18: ``stage1`` [B, 32, 32, 64], ``stage2`` [B, 16, 16, 128], ``stage3``
  [B, 8, 8, 256], ``stage4`` [B, 4, 4, 512] (stage outputs, before the final BN-ReLU),
  ``last_conv`` [B, 4, 4, 512] (after the final BN-ReLU, the map that is pooled; ``stage4`` itself
  with ``final_bn=False``), ``penultimate`` [B, 512].
* ResNet18: ``stage1`` [B, 32, 32, 64], ``stage2`` [B, 16, 16, 128], ``stage3`` [B, 8, 8, 256],
  ``stage4`` [B, 4, 4, 512] (stage outputs), ``last_conv`` [B, 4, 4, 512] (the map that is pooled;
  equal to ``stage4``, blocks are post-activation), ``penultimate`` [B, 512].
"""

from __future__ import annotations

from typing import ClassVar

import flax.linen as nn
import jax.numpy as jnp

from advjax.models.checks import check_images
from advjax.models.functional import FEATURE_COLLECTION
from advjax.models.layers import batch_norm, conv, global_avg_pool
from advjax.models.normalize import CIFAR10_MEAN, CIFAR10_STD, normalize


class BasicBlock(nn.Module):
    """Post-activation basic block (He et al. 2016a): relu(bn(conv(relu(bn(conv(x))))) + s(x)).

    ``s`` is ``x`` or, when the shape changes, a strided 1x1 convolution: with a bias
    (ResNet-20), or with ``projection_bn`` followed by BatchNorm (He et al. 2016a option B;
    ResNet-18, kuangliu/pytorch-cifar ``BasicBlock``).
    """

    features: int
    strides: int = 1
    bn_axis_name: str | None = None
    projection_bn: bool = False

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool) -> jnp.ndarray:
        shortcut = x
        y = conv(self.features, 3, self.strides, name="conv1")(x)
        y = nn.relu(batch_norm(train, self.bn_axis_name, name="bn1")(y))
        y = conv(self.features, 3, 1, name="conv2")(y)
        y = batch_norm(train, self.bn_axis_name, name="bn2")(y)
        if self.strides != 1 or x.shape[-1] != self.features:
            if self.projection_bn:
                shortcut = conv(self.features, 1, self.strides, name="shortcut_conv")(x)
                shortcut = batch_norm(train, self.bn_axis_name, name="shortcut_bn")(shortcut)
            else:
                shortcut = conv(self.features, 1, self.strides, name="shortcut", use_bias=True)(x)
        return nn.relu(y + shortcut)


class ResNet20(nn.Module):
    """CIFAR ResNet-(6n+2) with post-activation basic blocks; ``depth=20`` gives ResNet-20.

    Attributes:
      num_classes: number of output logits.
      depth: 6n+2 (20, 32, 44, 56, 110); n blocks per stage.
      mean, std: per-channel normalisation applied first (CIFAR-10 statistics by default).
      bn_axis_name: optional axis name for cross-device (synchronised) BatchNorm statistics.
    """

    num_classes: int = 10
    depth: int = 20
    mean: tuple[float, ...] = CIFAR10_MEAN
    std: tuple[float, ...] = CIFAR10_STD
    bn_axis_name: str | None = None

    feature_names: ClassVar[tuple[str, ...]] = (
        "stage1", "stage2", "stage3", "last_conv", "penultimate",
    )  # fmt: skip

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool = False) -> jnp.ndarray:
        check_images(x, channels=3)
        if self.depth < 8 or (self.depth - 2) % 6 != 0:
            raise ValueError(f"ResNet depth must be 6n+2 with n >= 1 (e.g. 20), got {self.depth}")
        n = (self.depth - 2) // 6
        x = normalize(x, self.mean, self.std)
        x = conv(16, 3, 1, name="conv_stem")(x)
        x = nn.relu(batch_norm(train, self.bn_axis_name, name="bn_stem")(x))
        for stage, width in enumerate((16, 32, 64)):
            for block in range(n):
                strides = 2 if stage > 0 and block == 0 else 1
                x = BasicBlock(
                    width, strides, self.bn_axis_name, name=f"stage{stage + 1}_block{block + 1}"
                )(x, train)
            self.sow(FEATURE_COLLECTION, f"stage{stage + 1}", x)
        self.sow(FEATURE_COLLECTION, "last_conv", x)
        features = global_avg_pool(x)
        self.sow(FEATURE_COLLECTION, "penultimate", features)
        return nn.Dense(self.num_classes, name="fc")(features)


class PreActBlock(nn.Module):
    """Pre-activation basic block (He et al. 2016b; Wong et al. 2020's ``PreActBlock``).

    ``out = relu(bn1(x)); y = conv2(relu(bn2(conv1(out)))) + s``, where the shortcut ``s`` is ``x``
    or, when the shape changes, a 1x1 strided convolution of ``out`` (of ``x`` when
    ``preact_shortcut=False``).
    """

    features: int
    strides: int = 1
    bn_axis_name: str | None = None
    preact_shortcut: bool = True

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool) -> jnp.ndarray:
        out = nn.relu(batch_norm(train, self.bn_axis_name, name="bn1")(x))
        shortcut = x
        if self.strides != 1 or x.shape[-1] != self.features:
            source = out if self.preact_shortcut else x
            shortcut = conv(self.features, 1, self.strides, name="shortcut")(source)
        y = conv(self.features, 3, self.strides, name="conv1")(out)
        y = nn.relu(batch_norm(train, self.bn_axis_name, name="bn2")(y))
        y = conv(self.features, 3, 1, name="conv2")(y)
        return y + shortcut


class PreActResNet18(nn.Module):
    """PreAct-ResNet-18 of Wong et al. (2020) fast adversarial training.

    Attributes:
      num_classes: number of output logits.
      mean, std: per-channel normalisation applied first (CIFAR-10 statistics by default).
      bn_axis_name: optional axis name for cross-device (synchronised) BatchNorm statistics.
      preact_shortcut: the projection shortcuts read ``relu(bn1(x))`` (default) or ``x``.
      final_bn: apply the final BN-ReLU before pooling (default) or pool the last stage directly.
    """

    num_classes: int = 10
    mean: tuple[float, ...] = CIFAR10_MEAN
    std: tuple[float, ...] = CIFAR10_STD
    bn_axis_name: str | None = None
    preact_shortcut: bool = True
    final_bn: bool = True

    feature_names: ClassVar[tuple[str, ...]] = (
        "stage1", "stage2", "stage3", "stage4", "last_conv", "penultimate",
    )  # fmt: skip

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool = False) -> jnp.ndarray:
        check_images(x, channels=3)
        x = normalize(x, self.mean, self.std)
        x = conv(64, 3, 1, name="conv_stem")(x)
        for stage, width in enumerate((64, 128, 256, 512)):
            for block in range(2):
                strides = 2 if stage > 0 and block == 0 else 1
                x = PreActBlock(
                    width,
                    strides,
                    self.bn_axis_name,
                    self.preact_shortcut,
                    name=f"stage{stage + 1}_block{block + 1}",
                )(x, train)
            self.sow(FEATURE_COLLECTION, f"stage{stage + 1}", x)
        if self.final_bn:
            x = nn.relu(batch_norm(train, self.bn_axis_name, name="bn_final")(x))
        self.sow(FEATURE_COLLECTION, "last_conv", x)
        features = global_avg_pool(x)
        self.sow(FEATURE_COLLECTION, "penultimate", features)
        return nn.Dense(self.num_classes, name="fc")(features)


class ResNet18(nn.Module):
    """CIFAR ResNet-18 (kuangliu/pytorch-cifar, RobustBench ``ResNet18``).

    Attributes:
      num_classes: number of output logits.
      mean, std: per-channel normalisation applied first (CIFAR-10 statistics by default).
      bn_axis_name: optional axis name for cross-device (synchronised) BatchNorm statistics.
    """

    num_classes: int = 10
    mean: tuple[float, ...] = CIFAR10_MEAN
    std: tuple[float, ...] = CIFAR10_STD
    bn_axis_name: str | None = None

    feature_names: ClassVar[tuple[str, ...]] = (
        "stage1", "stage2", "stage3", "stage4", "last_conv", "penultimate",
    )  # fmt: skip

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool = False) -> jnp.ndarray:
        check_images(x, channels=3)
        x = normalize(x, self.mean, self.std)
        x = conv(64, 3, 1, name="conv_stem")(x)
        x = nn.relu(batch_norm(train, self.bn_axis_name, name="bn_stem")(x))
        for stage, width in enumerate((64, 128, 256, 512)):
            for block in range(2):
                strides = 2 if stage > 0 and block == 0 else 1
                x = BasicBlock(
                    width,
                    strides,
                    self.bn_axis_name,
                    projection_bn=True,
                    name=f"stage{stage + 1}_block{block + 1}",
                )(x, train)
            self.sow(FEATURE_COLLECTION, f"stage{stage + 1}", x)
        self.sow(FEATURE_COLLECTION, "last_conv", x)
        features = global_avg_pool(x)
        self.sow(FEATURE_COLLECTION, "penultimate", features)
        return nn.Dense(self.num_classes, name="fc")(features)
