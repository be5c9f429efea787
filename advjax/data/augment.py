"""Jittable data augmentation on float32 NHWC batches."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax


def pad_crop_flip(
    key: jax.Array,
    images: jax.Array,
    pad: int = 4,
    flip: bool = True,
    mode: str = "constant",
) -> jax.Array:
    """Standard CIFAR augmentation: per-example random crop of the padded image + h-flip.

    Each image is padded by `pad` pixels on every side (zeros by default, as in the usual
    adversarial-training code; `mode="reflect"` also works), cropped back to H x W at a random
    offset in [0, 2 * pad], and mirrored left-right with probability 1/2 when `flip`.
    Shapes are static, so it jits and runs inside `pmap`.
    """
    if images.ndim != 4:
        raise ValueError(f"images must be [N, H, W, C], got shape {images.shape}.")
    n, h, w, c = images.shape
    crop_key, flip_key = jax.random.split(key)
    if pad > 0:
        widths = ((0, 0), (pad, pad), (pad, pad), (0, 0))
        padded = jnp.pad(images, widths, mode=mode)
        offsets = jax.random.randint(crop_key, (n, 2), 0, 2 * pad + 1)

        def crop(image: jax.Array, offset: jax.Array) -> jax.Array:
            return lax.dynamic_slice(image, (offset[0], offset[1], 0), (h, w, c))

        images = jax.vmap(crop)(padded, offsets)
    if flip:
        flips = jax.random.bernoulli(flip_key, 0.5, (n,))
        images = jnp.where(flips[:, None, None, None], images[:, :, ::-1, :], images)
    return images
