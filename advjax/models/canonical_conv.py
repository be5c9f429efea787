"""A convolution whose input gradient XLA:CPU runs on its fast path inside loops too.

XLA:CPU rewrites convolutions into the canonical NHWC/HWIO form its fast kernels need, but only in
the entry computation (``conv_canonicalization.cc``). The input gradient JAX emits for a conv has
its kernel in ``01oi`` order, so inside a ``while`` body or a ``lax.switch`` branch (APGD's 100
iterations, AutoAttack's compacted cascade) it stays a naive loop nest: about 35x slower for the
second conv of the 4-conv MNIST CNN (results/benchmark_pgd.md, "Why the while loop is slow").

:func:`conv_general_dilated` is a drop-in for ``flax.linen.Conv(conv_general_dilated=...)``: for
stride-1, undilated, ungrouped NHWC/HWIO convolutions its VJP computes the input gradient as a
convolution of the cotangent with the spatially flipped, I/O-swapped kernel, which is already
canonical. The value and the weight gradient are the ordinary ones; other convolutions fall
through to ``lax.conv_general_dilated`` unchanged. Reverse-mode of reverse-mode works (the
Jacobian regularisers differentiate input gradients); forward mode (``jax.jvp``) does not.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp

_NHWC = ("NHWC", "HWIO", "NHWC")
Pads = tuple[tuple[int, int], tuple[int, int]]


def _conv(x: jax.Array, w: jax.Array, pads: Pads, precision: Any = None) -> jax.Array:
    return jax.lax.conv_general_dilated(
        x, w, (1, 1), pads, dimension_numbers=_NHWC, precision=precision
    )


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _canonical(x: jax.Array, w: jax.Array, pads: Pads, precision: Any) -> jax.Array:
    return _conv(x, w, pads, precision)


def _fwd(x, w, pads, precision):
    return _conv(x, w, pads, precision), (x, w)


def _bwd(pads, precision, res, g):
    x, w = res
    kh, kw = w.shape[:2]
    # d/dx of a stride-1 correlation: correlate the cotangent with the flipped kernel, in and out
    # channels swapped (HWIO -> HWOI read as HWIO), padded by k - 1 - pad on each side.
    w_t = jnp.flip(w, (0, 1)).transpose(0, 1, 3, 2)
    (top, bottom), (left, right) = pads
    t_pads = ((kh - 1 - top, kh - 1 - bottom), (kw - 1 - left, kw - 1 - right))
    dx = _conv(g, w_t, t_pads, precision)
    dw = jax.vjp(lambda k: _conv(x, k, pads, precision), w)[1](g)[0]
    return dx, dw


_canonical.defvjp(_fwd, _bwd)


def conv_general_dilated(
    lhs: jax.Array,
    rhs: jax.Array,
    window_strides,
    padding,
    lhs_dilation=None,
    rhs_dilation=None,
    dimension_numbers=None,
    feature_group_count: int = 1,
    batch_group_count: int = 1,
    precision=None,
    preferred_element_type=None,
) -> jax.Array:
    """``lax.conv_general_dilated`` with a canonical-form input gradient where it applies."""
    canonical = (
        tuple(window_strides) == (1, 1)
        and all(d is None or tuple(d) == (1, 1) for d in (lhs_dilation, rhs_dilation))
        and feature_group_count == 1
        and batch_group_count == 1
        and preferred_element_type is None
        and lhs.ndim == 4
        and _is_nhwc(dimension_numbers)
    )
    if not canonical:
        return jax.lax.conv_general_dilated(
            lhs,
            rhs,
            window_strides,
            padding,
            lhs_dilation=lhs_dilation,
            rhs_dilation=rhs_dilation,
            dimension_numbers=dimension_numbers,
            feature_group_count=feature_group_count,
            batch_group_count=batch_group_count,
            precision=precision,
            preferred_element_type=preferred_element_type,
        )
    if isinstance(padding, str):
        padding = jax.lax.padtype_to_pads(lhs.shape[1:3], rhs.shape[:2], (1, 1), padding)
    pads = tuple((int(lo), int(hi)) for lo, hi in padding)
    return _canonical(lhs, rhs, pads, precision)


def _is_nhwc(dimension_numbers: Any) -> bool:
    """Whether 2-D ``dimension_numbers`` (strings or ``ConvDimensionNumbers``) mean NHWC/HWIO."""
    if dimension_numbers is None:
        return False
    shape = (1, 1, 1, 1)
    spec = jax.lax.conv_dimension_numbers(shape, shape, dimension_numbers)
    return spec == jax.lax.conv_dimension_numbers(shape, shape, _NHWC)
