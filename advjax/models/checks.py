"""Static input checks shared by every advjax model.

advjax models take NHWC float images in [0, 1] (DESIGN.md, "Contracts: Model function"). The checks
here only look at static properties (rank, shape, dtype), so they run at trace time and work under
``jax.jit``, ``vmap`` and ``pmap``; they never inspect values.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax.numpy as jnp

_NHWC = "NHWC [batch, height, width, channels]"


def check_images(
    x: jnp.ndarray,
    expected_hw: Sequence[int] | None = None,
    channels: int | None = None,
) -> None:
    """Raise a clear error if ``x`` is not a batch of NHWC float images.

    Args:
      x: the model input (an array or a tracer; only ``shape`` and ``dtype`` are read).
      expected_hw: ``(height, width)`` the model needs, or ``None`` for any spatial size.
      channels: the number of channels the model needs, or ``None`` for any.

    Raises:
      ValueError: wrong rank, NCHW-looking layout, channel or spatial-size mismatch.
      TypeError: integer/boolean images (advjax expects floats in [0, 1]).
    """
    shape = tuple(x.shape)
    if len(shape) != 4:
        hint = ""
        if len(shape) == 3:
            hint = (
                " For a batch of single-channel images [batch, height, width], add the channel "
                "axis with x[..., None]; for one image [height, width, channels], add the batch "
                "axis with x[None]."
            )
        raise ValueError(
            f"advjax models expect a rank-4 input in {_NHWC}; got shape {shape} "
            f"(rank {len(shape)}).{hint}"
        )
    if shape[1] in (1, 3) and shape[-1] not in (1, 3):
        raise ValueError(
            f"input of shape {shape} looks like NCHW [batch, channels, height, width], but advjax "
            f"expects {_NHWC}. Convert it with jnp.transpose(x, (0, 2, 3, 1))."
        )
    if channels is not None and shape[-1] != channels:
        raise ValueError(
            f"this model expects {channels}-channel images in {_NHWC}, but the input of shape "
            f"{shape} has {shape[-1]} channels."
        )
    if expected_hw is not None and tuple(shape[1:3]) != tuple(expected_hw):
        h, w = expected_hw
        raise ValueError(
            f"this model expects {h}x{w} images in {_NHWC}, but the input of shape {shape} is "
            f"{shape[1]}x{shape[2]}."
        )
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise TypeError(
            f"advjax models expect float images in [0, 1]; got dtype {x.dtype}. For uint8 "
            f"images use x.astype(jnp.float32) / 255."
        )
