"""Fast convolutions for any model on CPU: a rewrite of the traced computation (issue 21).

XLA:CPU runs a convolution on its fast path only in the canonical NHWC/HWIO form, and rewrites
other forms into it only in the entry computation: the input gradient JAX emits (kernel in ``01oi``
order; for a strided convolution, a base-dilated one) stays a naive loop nest inside a ``while``
body or a ``switch`` branch, which is where attacks spend their time (``canonical_conv``;
``results/benchmark_pgd.md``). The zoo's MNIST CNNs avoid this by building their layers on
``canonical_conv``; a user's model does not.

``canonicalize(fn)`` returns a function with the same values and derivatives as ``fn`` in which
every ``conv_general_dilated`` of ``fn``'s trace (Flax linen or nnx, Haiku-style functions, raw
``lax`` calls; also inside nested ``jit``) is computed in NHWC/HWIO with a custom VJP whose input
gradient is made of stride-1, undilated correlations of the cotangent with the flipped, I/O-swapped
kernel, one per stride phase (``_input_gradient``): canonical wherever it runs, and without the
zeros a stride-dilated cotangent would multiply; non-overlapping 2-D max pooling (Flax's
``nn.max_pool`` with window = stride) becomes reshape + max with select-and-scatter's gradient
(``max_pool_from_params``). Strides, kernel dilation and any layout
(NCHW/OIHW included) are covered; grouped and depthwise convolutions, base (input) dilation,
``batch_group_count`` and non-2-D convolutions fall through unchanged, as do convolutions inside
other higher-order primitives (``scan``, ``cond``, ``remat``, ``custom_jvp``/``custom_vjp``
rules: the zoo's layers are already canonical). Reverse mode of any order works; forward mode
(``jax.jvp``) through a rewritten convolution does not (a ``custom_vjp`` limitation).

Automatic use. The library applies it on its own where models run: every attack entry point
(``advjax.attacks.base.validated``, so a user's ``model_fn`` of any kind) and
``advjax.models.forward`` (the training step, defense terms, the zoo's ``make_model_fn``), through
``auto_canonicalize``: only when JAX's default backend is the CPU (XLA:GPU and TPU pick their own
convolution layouts; there the rewrite would only add transposes), and never twice (a model called
inside a rewritten model is rewritten once, by the outermost call). ``canonicalization(False)``
(or ``ADVJAX_CANONICALIZE=0`` in the environment) switches it off for what is traced inside the
block; as with ``advjax.validation.value_checks``, ``jax.jit`` caches traces by function, so set
it before a function's first call.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import functools
import os
from collections.abc import Callable, Iterator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.extend import core as jcore

_NHWC = ("NHWC", "HWIO", "NHWC")
_INLINED = ("pjit", "jit", "closed_call", "core_call")


_ENABLED = contextvars.ContextVar(
    "advjax_canonicalize", default=os.environ.get("ADVJAX_CANONICALIZE", "1") != "0"
)
_REWRITING = contextvars.ContextVar("advjax_canonicalize_rewriting", default=False)


def canonicalize(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn`` with its 2-D convolutions in the canonical form (see the module docstring).

    ``fn`` takes positional pytree arguments; inside another canonicalized call it runs as is
    (the outer rewrite covers it).
    """

    @functools.wraps(fn)
    def canonical(*args):
        if _REWRITING.get():
            return fn(*args)
        flat, in_tree = jax.tree.flatten(args)
        token = _REWRITING.set(True)
        try:
            closed, out_shape = jax.make_jaxpr(
                lambda *leaves: fn(*jax.tree.unflatten(in_tree, leaves)), return_shape=True
            )(*flat)
        finally:
            _REWRITING.reset(token)
        out = _evaluate(closed.jaxpr, closed.consts, flat)
        return jax.tree.unflatten(jax.tree.structure(out_shape), out)

    return canonical


@contextlib.contextmanager
def canonicalization(enabled: bool) -> Iterator[None]:
    """Turns the automatic rewrite (``auto_canonicalize``) on or off for what is traced inside
    the block. Explicit ``canonicalize(fn)`` calls are not affected."""
    token = _ENABLED.set(bool(enabled))
    try:
        yield
    finally:
        _ENABLED.reset(token)


def rewrite_active() -> bool:
    """Whether ``auto_canonicalize`` rewrites now: switched on and JAX's default backend is CPU."""
    return _ENABLED.get() and jax.default_backend() == "cpu"


@dataclasses.dataclass(frozen=True)
class CanonicalModelFn:
    """``canonicalize(model_fn)`` as a hashable value: equal wrappers of equal ``model_fn``s hash
    alike, so a ``jax.jit`` with the model function static does not retrace."""

    model_fn: Callable[..., Any]

    def __call__(self, *args: Any) -> Any:
        return canonicalize(self.model_fn)(*args)


def auto_canonicalize(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``CanonicalModelFn(fn)`` where the rewrite helps (``rewrite_active()``), else ``fn``."""
    if isinstance(fn, CanonicalModelFn) or not rewrite_active():
        return fn
    return CanonicalModelFn(fn)


def _evaluate(jaxpr: jcore.Jaxpr, consts: list[Any], args: list[Any]) -> list[Any]:
    env: dict[Any, Any] = {}

    def read(var):
        return var.val if isinstance(var, jcore.Literal) else env[var]

    def write(var, value):
        if not isinstance(var, jcore.DropVar):
            env[var] = value

    for var, value in zip(jaxpr.constvars, consts, strict=True):
        write(var, value)
    for var, value in zip(jaxpr.invars, args, strict=True):
        write(var, value)
    for eqn in jaxpr.eqns:
        invals = [read(v) for v in eqn.invars]
        name = eqn.primitive.name
        if name == "conv_general_dilated":
            outvals = [conv_from_params(*invals, eqn.params)]
        elif name == "reduce_window_max":
            outvals = [max_pool_from_params(*invals, eqn.params)]
        elif name in _INLINED and ("jaxpr" in eqn.params or "call_jaxpr" in eqn.params):
            sub = eqn.params.get("jaxpr", eqn.params.get("call_jaxpr"))
            if isinstance(sub, jcore.ClosedJaxpr):
                outvals = _evaluate(sub.jaxpr, sub.consts, invals)
            else:
                outvals = _evaluate(sub, [], invals)
        else:
            with eqn.ctx.manager:
                outvals = eqn.primitive.bind(*invals, **eqn.primitive.get_bind_params(eqn.params))
            if not eqn.primitive.multiple_results:
                outvals = [outvals]
        for var, value in zip(eqn.outvars, outvals, strict=True):
            write(var, value)
    return [read(v) for v in jaxpr.outvars]


def conv_from_params(lhs: jax.Array, rhs: jax.Array, params: dict[str, Any]) -> jax.Array:
    """A ``conv_general_dilated`` equation's value, canonical where it applies."""
    known = (
        "window_strides", "padding", "lhs_dilation", "rhs_dilation", "dimension_numbers",
        "feature_group_count", "batch_group_count", "precision", "preferred_element_type",
    )  # fmt: skip
    if (
        lhs.ndim != 4
        or params["feature_group_count"] != 1
        or params["batch_group_count"] != 1
        or params["preferred_element_type"] is not None
        or any(value is not None for key, value in params.items() if key not in known)
        or any(d != 1 for d in (params["lhs_dilation"] or (1, 1)))
    ):
        return jax.lax.conv_general_dilated_p.bind(lhs, rhs, **params)
    dimension_numbers, precision = params["dimension_numbers"], params["precision"]
    window_strides, padding = params["window_strides"], params["padding"]
    rhs_dilation = params["rhs_dilation"]
    lhs_spec, rhs_spec, out_spec = dimension_numbers
    x = jnp.transpose(lhs, (lhs_spec[0], lhs_spec[2], lhs_spec[3], lhs_spec[1]))
    w = jnp.transpose(rhs, (rhs_spec[2], rhs_spec[3], rhs_spec[1], rhs_spec[0]))
    config = (
        tuple(int(s) for s in window_strides),
        tuple((int(lo), int(hi)) for lo, hi in padding),
        tuple(int(d) for d in (rhs_dilation or (1, 1))),
        precision,
    )
    y = _canonical_conv(x, w, config)
    to_out = (
        out_spec[0],
        out_spec[2],
        out_spec[3],
        out_spec[1],
    )  # NHWC axis i is out axis to_out[i]
    return jnp.transpose(y, np.argsort(to_out))


def _forward(x: jax.Array, w: jax.Array, config) -> jax.Array:
    strides, pads, dilation, precision = config
    return jax.lax.conv_general_dilated(
        x, w, strides, pads, rhs_dilation=dilation, dimension_numbers=_NHWC, precision=precision
    )


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _canonical_conv(x: jax.Array, w: jax.Array, config) -> jax.Array:
    return _forward(x, w, config)


def _fwd(x, w, config):
    return _forward(x, w, config), (x, w)


def _bwd(config, res, g):
    x, w = res
    strides, pads, dilation, precision = config
    # The kernel as applied: spatially dilated (zeros between taps), flipped, in/out swapped.
    dh, dw_ = dilation
    applied = jax.lax.pad(
        w, jnp.zeros((), w.dtype), ((0, 0, dh - 1), (0, 0, dw_ - 1), (0, 0, 0), (0, 0, 0))
    )
    dx = _input_gradient(g, applied, x.shape, strides, pads, precision)
    dw = jax.vjp(lambda k: _forward(x, k, config), w)[1](g)[0]
    return dx, dw


def _input_gradient(g, kernel, x_shape, strides, pads, precision):
    """d/dx of the strided correlation ``y[o] = sum_k x[o s + k - lo] kernel[k]``, as ``s_h s_w``
    stride-1 correlations, one per output phase ``i = r + s m`` (no zeros multiplied).

    Input row ``r + s m`` receives the taps ``k = c + s j`` with ``c = (r + lo) mod s``:
    ``dx_r[m] = sum_j g[m + q - j] kernel[c + s j]``, ``q = (r + lo - c) / s``, a VALID
    correlation of ``g`` (cropped or zero-padded to rows ``q - J + 1 .. q + M_r - 1``) with the
    flipped sub-kernel ``kernel[c::s]``. The phases are interleaved by a reshape.
    """
    (s_h, s_w), (_, h, w_in, c_in) = strides, x_shape
    rows, cols = _phases(s_h, pads[0][0], h), _phases(s_w, pads[1][0], w_in)
    m_h, m_w = -(-h // s_h), -(-w_in // s_w)
    grid = []
    for c_h, q_h, n_h in rows:
        line = []
        for c_w, q_w, n_w in cols:
            sub = kernel[c_h::s_h, c_w::s_w]
            j_h, j_w = sub.shape[:2]
            if j_h == 0 or j_w == 0:  # no tap reaches this phase (kernel smaller than stride)
                part = jnp.zeros((g.shape[0], m_h, m_w, c_in), g.dtype)
            else:
                window = jax.lax.pad(
                    g,
                    jnp.zeros((), g.dtype),
                    (
                        (0, 0, 0),
                        (j_h - 1 - q_h, n_h - 1 + q_h - (g.shape[1] - 1), 0),
                        (j_w - 1 - q_w, n_w - 1 + q_w - (g.shape[2] - 1), 0),
                        (0, 0, 0),
                    ),
                )
                flipped = jnp.flip(sub, (0, 1)).transpose(0, 1, 3, 2)
                part = jax.lax.conv_general_dilated(
                    window, flipped, (1, 1), "VALID", dimension_numbers=_NHWC, precision=precision
                )
                part = jnp.pad(part, ((0, 0), (0, m_h - n_h), (0, m_w - n_w), (0, 0)))
            line.append(part)
        grid.append(jnp.stack(line, axis=3))  # [B, m_h, m_w, s_w, C]
    dx = jnp.stack(grid, axis=2)  # [B, m_h, s_h, m_w, s_w, C]
    dx = dx.reshape(g.shape[0], m_h * s_h, m_w * s_w, c_in)
    return dx[:, :h, :w_in]


def _phases(stride: int, lo: int, size: int) -> list[tuple[int, int, int]]:
    """Per residue ``r < stride``: the first tap ``c``, the offset ``q`` and the rows ``M_r``."""
    phases = []
    for r in range(stride):
        c = (r + lo) % stride
        phases.append((c, (r + lo - c) // stride, -(-(size - r) // stride)))
    return phases


_canonical_conv.defvjp(_fwd, _bwd)


def max_pool_from_params(x: jax.Array, params: dict[str, Any]) -> jax.Array:
    """A ``reduce_window_max`` equation's value; non-overlapping 2-D pooling (``nn.max_pool``
    with window = stride, no padding) as reshape + max, the rest unchanged.

    XLA:CPU's gradient of a windowed max, select-and-scatter, allocates full-size index arrays
    on every call (``advjax/models/mnist.py``, ``_max_pool``). The rewrite's gradient goes to the
    first maximum of each window in row-major order, as select-and-scatter's does.
    """
    window, strides = tuple(params["window_dimensions"]), tuple(params["window_strides"])
    pooled = [axis for axis, size in enumerate(window) if size != 1]
    if (
        window != strides
        or any(tuple(p) != (0, 0) for p in params["padding"])
        or any(d != 1 for d in (*params["base_dilation"], *params["window_dilation"]))
        or x.ndim != 4
        or pooled not in ([1, 2], [1], [2])
    ):
        return jax.lax.reduce_window_max_p.bind(x, **params)
    return _window_max(x, window[1], window[2])


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2))
def _window_max(x: jax.Array, kh: int, kw: int) -> jax.Array:
    return jnp.max(_windows(x, kh, kw), axis=-1)


def _windows(x: jax.Array, kh: int, kw: int) -> jax.Array:
    """``[B, H/kh, W/kw, C, kh * kw]``: each window's entries in row-major order (the rows and
    columns that do not fill a window are dropped, as VALID pooling does)."""
    b, h, w, c = x.shape
    x = x[:, : h // kh * kh, : w // kw * kw]
    x = x.reshape(b, h // kh, kh, w // kw, kw, c)
    return x.transpose(0, 1, 3, 5, 2, 4).reshape(b, h // kh, w // kw, c, kh * kw)


def _window_max_fwd(x, kh, kw):
    windows = _windows(x, kh, kw)
    return jnp.max(windows, axis=-1), (jnp.argmax(windows, axis=-1), x.shape)


def _window_max_bwd(kh, kw, res, g):
    first, shape = res
    b, h, w, c = shape
    spread = jax.nn.one_hot(first, kh * kw, dtype=g.dtype) * g[..., None]
    spread = spread.reshape(b, h // kh, w // kw, c, kh, kw).transpose(0, 1, 4, 2, 5, 3)
    spread = spread.reshape(b, h // kh * kh, w // kw * kw, c)
    return (jnp.pad(spread, ((0, 0), (0, h - h // kh * kh), (0, w - w // kw * kw), (0, 0))),)


_window_max.defvjp(_window_max_fwd, _window_max_bwd)
