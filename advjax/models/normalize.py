"""Per-channel input normalisation applied inside advjax models.

Attacks and threat models work in pixel space [0, 1] (DESIGN.md, "Contracts: Model function"), so
the dataset standardisation ``(x - mean) / std`` is the first operation of every model rather than a
data-pipeline step. This keeps epsilon balls and box constraints in the same units for every model.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax.numpy as jnp

#: Identity normalisation (the default for the MNIST nets).
IDENTITY_MEAN: tuple[float, ...] = (0.0,)
IDENTITY_STD: tuple[float, ...] = (1.0,)

#: CIFAR-10 per-channel statistics (the defaults for the CIFAR nets).
CIFAR10_MEAN: tuple[float, float, float] = (0.4914, 0.4822, 0.4465)
CIFAR10_STD: tuple[float, float, float] = (0.2471, 0.2435, 0.2616)


def normalize(x: jnp.ndarray, mean: Sequence[float], std: Sequence[float]) -> jnp.ndarray:
    """Return ``(x - mean) / std`` with per-channel (or scalar, length-1) ``mean`` and ``std``.

    ``x`` is NHWC; ``mean`` and ``std`` have length 1 or ``x.shape[-1]``.
    """
    channels = x.shape[-1]
    for name, value in (("mean", mean), ("std", std)):
        if len(value) not in (1, channels):
            raise ValueError(
                f"normalisation {name} has {len(value)} entries, but the input has {channels} "
                f"channels; give 1 or {channels} values."
            )
    if all(m == 0.0 for m in mean) and all(s == 1.0 for s in std):
        return x
    mean_arr = jnp.asarray(mean, dtype=x.dtype)
    std_arr = jnp.asarray(std, dtype=x.dtype)
    return (x - mean_arr) / std_arr
