"""Loss landscapes on 2-D planes: in an attack's parameter space and in input space.

* ``plane_values``: the generic evaluator: ``value_fn(theta0 + a d1 + b d2) -> [B]`` on a grid of
  coefficients ``(a, b)``, batched in chunks of grid points. Everything below is built on it.
* ``transform_landscape``: the loss of ``model(transform(x, theta))`` over a plane in the
  parameter space of a transformation (Pareto doc, Sec. 2 and Fig. 2: the integrated spatial
  attack's loss over ``w = [w_F, w_RT]``).
* ``spatial_landscape`` / ``spatial_directions``: the same for the threat models of
  ``advjax.threats.spatial`` (rotation-translation, affine, flow, integrated), directions scaled
  to the threat's bounds.
* ``input_space_landscape`` / ``input_directions``: the loss on the plane through ``x`` spanned by
  an adversarial direction and a random one (the loss surfaces of the SRT doc's App. H).

Grids are ``coefficients = linspace(-span, span, n)`` with ``n`` odd, so the centre point
``[n // 2, n // 2]`` is ``theta0`` (or ``x``) itself. Results are ``[B, n1, n2]``, axis 1 along the
first direction.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from advjax import losses
from advjax.attacks.base import ModelFn
from advjax.threats.spatial import (
    AffineSet,
    FlowSet,
    IntegratedSet,
    RotationTranslation,
    SpatialParams,
)

CHUNK_SIZE = 16  # grid points evaluated together (our choice: chunk * B images per forward pass)


def centered_grid(span: float, num_points: int) -> jax.Array:
    """``linspace(-span, span, num_points)``; ``num_points`` must be odd so that 0 is on it."""
    if num_points < 1 or num_points % 2 == 0:
        raise ValueError(
            f"num_points must be odd (the grid then holds the origin), got {num_points}"
        )
    return jnp.linspace(-span, span, num_points, dtype=jnp.float32)


def _axes(coefficients: Any) -> tuple[jax.Array, jax.Array]:
    if isinstance(coefficients, tuple | list):
        c1, c2 = coefficients
    else:
        c1 = c2 = coefficients
    c1, c2 = jnp.asarray(c1, jnp.float32), jnp.asarray(c2, jnp.float32)
    if c1.ndim != 1 or c2.ndim != 1:
        raise ValueError("coefficients must be 1-D (or a pair of 1-D arrays)")
    return c1, c2


def plane_values(
    value_fn: Callable[[Any], jax.Array],
    theta0: Any,
    d1: Any,
    d2: Any,
    coefficients: Any,
    *,
    chunk_size: int = CHUNK_SIZE,
) -> jax.Array:
    """``value_fn(theta0 + a d1 + b d2)`` for every ``(a, b)`` of the grid, ``[B, n1, n2]``.

    ``theta0``, ``d1`` and ``d2`` are pytrees of the same structure (leaves with a leading batch
    axis, or broadcastable to ``theta0``'s leaves); ``value_fn(theta) -> [B]``. ``coefficients`` is
    one 1-D array for both axes or a pair ``(c1 [n1], c2 [n2])``. Grid points are evaluated
    ``chunk_size`` at a time (``lax.map`` of a ``vmap``), so memory is ``chunk_size`` copies of
    the batch, not ``n1 * n2``.
    """
    c1, c2 = _axes(coefficients)
    a, b = (g.reshape(-1) for g in jnp.meshgrid(c1, c2, indexing="ij"))

    def at(ab: jax.Array) -> jax.Array:
        theta = jax.tree.map(
            lambda t, u, v: t + ab[0].astype(t.dtype) * u + ab[1].astype(t.dtype) * v,
            theta0,
            d1,
            d2,
        )
        return value_fn(theta)

    values = jax.lax.map(at, jnp.stack([a, b], axis=1), batch_size=max(1, int(chunk_size)))
    return jnp.moveaxis(values, 0, -1).reshape(values.shape[1:] + (c1.size, c2.size))


def _reduce(values: jax.Array, reduction: str) -> jax.Array:
    if reduction == "none":
        return values
    if reduction == "mean":
        return jnp.mean(values, axis=0)
    raise ValueError(f"unknown reduction {reduction!r}; valid: none, mean")


def transform_landscape(
    model_fn: ModelFn,
    variables: Any,
    x: jax.Array,
    y: jax.Array,
    transform: Callable[[jax.Array, Any], jax.Array],
    theta0: Any,
    d1: Any,
    d2: Any,
    coefficients: Any,
    *,
    loss: Any = "ce",
    reduction: str = "none",
    chunk_size: int = CHUNK_SIZE,
) -> jax.Array:
    """``loss(model(transform(x, theta0 + a d1 + b d2)), y)`` on the grid of ``(a, b)``.

    The loss over a 2-D slice of a transformation's parameter space (Pareto doc, Fig. 2: the CE of
    the integrated spatial attack over ``w``). ``transform(x, theta) -> x'`` is batched
    (``theta`` a pytree with a leading batch axis, as the threat models' ``apply`` take it).
    Returns ``[B, n1, n2]`` (``reduction="none"``) or the batch mean ``[n1, n2]`` (``"mean"``).
    """
    loss_fn = losses.get_loss(loss)
    x = jax.lax.stop_gradient(x)

    def value(theta: Any) -> jax.Array:
        return loss_fn(model_fn(variables, transform(x, theta)), y)

    values = plane_values(value, theta0, d1, d2, coefficients, chunk_size=chunk_size)
    return _reduce(values, reduction)


# ------------------------------------------------------------------------------ spatial threats


def _rademacher(key: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    return jax.random.rademacher(key, shape, jnp.float32)


def spatial_directions(
    threat: Any,
    x: jax.Array,
    key: jax.Array | None = None,
    coords: tuple[int, int] | None = None,
) -> tuple[Any, Any]:
    """Two directions in a spatial threat's parameter space, scaled to its bounds.

    ``coords=(i, j)``: the unit vectors of parameters ``i`` and ``j`` times their bounds (the
    ``[B, 3]`` ``(angle, tx, ty)`` of ``RotationTranslation``; the ``[B, 6]`` ``w_RT`` of
    ``AffineSet`` and of ``IntegratedSet``'s affine part, e.g. ``(2, 5)`` for the translations).
    Otherwise random sign vectors (``key`` needed), every component times its own bound: the
    analogue of Li et al.'s (2018) filter normalisation that the document cites for Fig. 2 (the
    identity ``w = 0`` has no norm to normalise by, so each block of parameters is scaled to its
    threat bound instead; our choice). Coefficient 1 then reaches the bound on every component.
    """
    batch = x.shape[0]
    if isinstance(threat, RotationTranslation):
        bounds = threat.bounds
    elif isinstance(threat, AffineSet):
        bounds = jnp.full((6,), threat.eps, jnp.float32)
    elif isinstance(threat, IntegratedSet):
        bounds = jnp.full((6,), threat.eps_affine, jnp.float32)
    elif isinstance(threat, FlowSet):
        bounds = None
    else:
        raise ValueError(f"not a spatial threat model: {type(threat).__name__}")
    if coords is not None:
        if bounds is None:
            raise ValueError("coords needs a threat with affine or rotation-translation parameters")
        units = [jnp.zeros((batch, bounds.size)).at[:, i].set(bounds[i]) for i in coords]
        if isinstance(threat, IntegratedSet):
            zero_flow = jnp.zeros(x.shape[:3] + (2,), jnp.float32)
            return tuple(SpatialParams(zero_flow, u) for u in units)
        return units[0], units[1]
    if key is None:
        raise ValueError("random directions need a key")
    k1, k2 = jax.random.split(key)
    if isinstance(threat, FlowSet):
        shape = x.shape[:3] + (2,)
        return tuple(threat.eps * _rademacher(k, shape) for k in (k1, k2))
    if isinstance(threat, IntegratedSet):
        shape = x.shape[:3] + (2,)

        def draw(k: jax.Array) -> SpatialParams:
            kf, ka = jax.random.split(k)
            return SpatialParams(
                threat.eps_flow * _rademacher(kf, shape),
                threat.eps_affine * _rademacher(ka, (batch, 6)),
            )

        return draw(k1), draw(k2)
    return tuple(bounds * _rademacher(k, (batch, bounds.size)) for k in (k1, k2))


def spatial_landscape(
    model_fn: ModelFn,
    variables: Any,
    x: jax.Array,
    y: jax.Array,
    threat: Any,
    key: jax.Array | None,
    *,
    num_points: int = 21,
    span: float = 1.0,
    theta0: Any = None,
    directions: tuple[Any, Any] | None = None,
    loss: Any = "ce",
    reduction: str = "none",
    chunk_size: int = CHUNK_SIZE,
) -> jax.Array:
    """Loss over a plane in a spatial threat's parameter space, ``[B, n, n]`` (or ``[n, n]``).

    Pareto doc, Fig. 2: centred at the identity (``theta0=None``: left and middle panels, with a
    large and a small ``span``) or at an attack's maximiser (``theta0`` from
    ``attacks.integrated_spatial(...).run_params``: right panel). ``directions`` default to
    ``spatial_directions(threat, x, key)``; coefficients are ``linspace(-span, span,
    num_points)``, in units of the threat's bounds (``span = 1``, ``num_points = 21``: our
    choice). The warp is ``threat.apply`` (bilinear, clipped to [0, 1]).
    """
    if theta0 is None:
        theta0 = threat.identity(x)
    d1, d2 = directions if directions is not None else spatial_directions(threat, x, key)
    return transform_landscape(
        model_fn,
        variables,
        x,
        y,
        lambda images, theta: threat.apply(theta, images),
        theta0,
        d1,
        d2,
        centered_grid(span, num_points),
        loss=loss,
        reduction=reduction,
        chunk_size=chunk_size,
    )


# ---------------------------------------------------------------------------------- input space


def _norm2(v: jax.Array) -> jax.Array:
    return jnp.sqrt(jnp.sum(v.reshape(v.shape[0], -1) ** 2, axis=1)).reshape(
        (-1,) + (1,) * (v.ndim - 1)
    )


def _safe_div(a: jax.Array, b: jax.Array) -> jax.Array:
    return jnp.where(b > 0, a / jnp.where(b > 0, b, 1.0), 0.0)


def gradient_sign_direction(
    model_fn: ModelFn, variables: Any, x: jax.Array, y: jax.Array, loss: Any = "ce"
) -> jax.Array:
    """``sign(grad_x loss(model(x), y))`` ``[B, H, W, C]``: FGSM's direction (unit Linf norm)."""
    loss_fn = losses.get_loss(loss)
    grad = jax.grad(lambda z: jnp.sum(loss_fn(model_fn(variables, z), y)))(x)
    return jnp.sign(grad)


def input_directions(
    model_fn: ModelFn,
    variables: Any,
    x: jax.Array,
    y: jax.Array,
    key: jax.Array,
    *,
    adv_direction: jax.Array | None = None,
    mode: str = "adversarial",
    random: str = "rademacher",
    orthogonal: bool = True,
    loss: Any = "ce",
) -> tuple[jax.Array, jax.Array]:
    """Two input-space directions ``(d1, d2)``, each ``[B, H, W, C]``, per example.

    ``mode="adversarial"``: ``d1`` is ``adv_direction`` (e.g. ``x_adv - x``) divided by its Linf
    norm, or by default ``sign(grad_x loss)`` (already of unit Linf norm), so coefficient ``c``
    is a perturbation of Linf size ``c``; ``d2`` is random. ``mode="random"``: ``d1`` is random
    too, of unit Linf norm (Rademacher) or Gaussian with the L2 norm of a Rademacher vector.
    The random ``d2`` (``"rademacher"`` or ``"gaussian"``) is made orthogonal to ``d1``
    (``orthogonal=True``, Gram-Schmidt per example) and scaled to ``d1``'s L2 norm (our choices).
    ``key`` is one key or per-example keys ``[B]``.
    """
    if random not in ("rademacher", "gaussian"):
        raise ValueError(f"unknown random direction {random!r}; valid: rademacher, gaussian")
    if mode not in ("adversarial", "random"):
        raise ValueError(f"unknown mode {mode!r}; valid: adversarial, random")
    x = jnp.asarray(x, jnp.float32)

    def draw(k: jax.Array, index: int) -> jax.Array:
        def one(kk: jax.Array, shape: tuple[int, ...]) -> jax.Array:
            kk = jax.random.fold_in(kk, index)
            if random == "rademacher":
                return jax.random.rademacher(kk, shape, jnp.float32)
            return jax.random.normal(kk, shape, jnp.float32)

        if k.ndim == 0:
            return one(k, x.shape)
        return jax.vmap(lambda kk: one(kk, x.shape[1:]))(k)

    if mode == "random":
        d1 = draw(key, 0)
        if random == "gaussian":
            d1 = d1 * _safe_div(jnp.sqrt(float(x[0].size)), _norm2(d1))
    elif adv_direction is None:
        d1 = gradient_sign_direction(model_fn, variables, x, y, loss)
    else:
        adv = jnp.asarray(adv_direction, jnp.float32)
        peak = jnp.max(jnp.abs(adv.reshape(adv.shape[0], -1)), axis=1)
        d1 = _safe_div(adv, peak.reshape((-1,) + (1,) * (adv.ndim - 1)))
    d2 = draw(key, 1)
    if orthogonal:
        dot = jnp.sum((d1 * d2).reshape(x.shape[0], -1), axis=1).reshape(-1, 1, 1, 1)
        d2 = d2 - _safe_div(dot, _norm2(d1) ** 2) * d1
    d2 = d2 * _safe_div(_norm2(d1), _norm2(d2))
    return jax.lax.stop_gradient(d1), jax.lax.stop_gradient(d2)


def input_space_landscape(
    model_fn: ModelFn,
    variables: Any,
    x: jax.Array,
    y: jax.Array,
    key: jax.Array,
    *,
    radius: float,
    num_points: int = 21,
    adv_direction: jax.Array | None = None,
    directions: tuple[jax.Array, jax.Array] | None = None,
    random: str = "rademacher",
    clip: bool = False,
    loss: Any = "ce",
    reduction: str = "none",
    chunk_size: int = CHUNK_SIZE,
) -> jax.Array:
    """Loss ``loss(model(x + a d1 + b d2), y)`` with ``a, b in linspace(-radius, radius, n)``.

    ``d1`` is the adversarial direction and ``d2`` a random one (``input_directions``; or pass
    ``directions``), as the loss surfaces of the SRT doc (App. H, Figs. 5-6). ``[B, n, n]`` (axis
    1 along ``d1``) or the batch mean ``[n, n]``; the centre ``[n // 2, n // 2]`` is the loss at
    ``x``. The points leave the [0, 1] box unless ``clip=True`` (default off: our choice, so the
    surface is the model's function of the plane; ``num_points = 21``: our choice too).
    """
    x = jax.lax.stop_gradient(jnp.asarray(x, jnp.float32))
    if directions is None:
        directions = input_directions(
            model_fn, variables, x, y, key, adv_direction=adv_direction, random=random, loss=loss
        )
    d1, d2 = directions
    transform = (lambda _, p: jnp.clip(p, 0.0, 1.0)) if clip else (lambda _, p: p)
    return transform_landscape(
        model_fn,
        variables,
        x,
        y,
        transform,
        x,
        d1,
        d2,
        centered_grid(radius, num_points),
        loss=loss,
        reduction=reduction,
        chunk_size=chunk_size,
    )
