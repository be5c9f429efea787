"""Layer conventions shared by the CIFAR residual networks.

* Convolutions have no bias (every one is followed or preceded by BatchNorm) and He/Kaiming normal
  ``fan_out`` initialisation, the ``normal_(0, sqrt(2 / (k * k * out_channels)))`` of the TRADES
  WideResNet and torchvision ResNets.
* BatchNorm matches PyTorch's defaults: running-average momentum 0.9 (PyTorch's ``momentum=0.1``),
  epsilon 1e-5, scale 1 and bias 0 at init; it uses batch statistics only in training mode.
"""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

BN_MOMENTUM = 0.9
BN_EPSILON = 1e-5

conv_kernel_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


def conv(
    features: int,
    kernel_size: int = 3,
    strides: int = 1,
    name: str | None = None,
    use_bias: bool = False,
) -> nn.Conv:
    """A square convolution with PyTorch-style padding (k // 2 on each side)."""
    pad = kernel_size // 2
    return nn.Conv(
        features,
        (kernel_size, kernel_size),
        strides=(strides, strides),
        padding=((pad, pad), (pad, pad)),
        use_bias=use_bias,
        kernel_init=conv_kernel_init,
        name=name,
    )


def batch_norm(train: bool, axis_name: str | None = None, name: str | None = None) -> nn.BatchNorm:
    """BatchNorm in the advjax convention (momentum 0.9, epsilon 1e-5, running stats at eval)."""
    return nn.BatchNorm(
        use_running_average=not train,
        momentum=BN_MOMENTUM,
        epsilon=BN_EPSILON,
        axis_name=axis_name,
        name=name,
    )


def global_avg_pool(x: jnp.ndarray) -> jnp.ndarray:
    """Average over the spatial axes of an NHWC tensor: [B, H, W, C] -> [B, C]."""
    return jnp.mean(x, axis=(1, 2))
