"""Lp-ball threat models intersected with the [0, 1] image box (or another box, or none:
``bounds``).

A threat model has three parts, each a pure function of a batch (leading axis = examples, the
remaining axes are flattened for the norms):

* ``init(key, x)``: a random point of ``B_p(x, eps) ∩ [0, 1]^D``;
* ``direction(grad, x_adv)``: the steepest-ascent direction of unit Lp norm
  (sign for Linf, ``g / ||g||_2`` for L2, a sparse top-k sign vector for L1);
* ``project(x_adv, x)``: the exact Euclidean projection onto ``B_p(x, eps) ∩ [0, 1]^D``.

The Linf projection is a clip. The L2 and L1 projections onto the intersection with the box come
from the KKT conditions: the minimiser of ``||δ - d||^2`` over ``{||δ||_p <= eps, lo <= δ <= hi}``
is ``δ(λ) = clip(d / (1 + λ), lo, hi)`` (L2) or ``clip(soft_threshold(d, λ), lo, hi)`` (L1) for
the smallest multiplier ``λ >= 0`` that makes ``δ(λ)`` feasible; ``||δ(λ)||_p`` is monotone in ``λ``
so a
fixed number of bisection steps finds it to float precision with static shapes. With
``bounds=None`` (inputs that are not images, ``advjax.validation.Domain``) the box is
``(-inf, inf)``: the projections are the plain ball's.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import optax

NORMS = ("linf", "l2", "l1")
_BISECTION_STEPS = 48


def is_concrete(value) -> bool:
    """True for Python numbers (hyperparameters may also be traced, e.g. a warmed-up eps)."""
    return isinstance(value, int | float)


def scaled(ball: LpBall, factor) -> LpBall:
    """The same ball with radius ``factor * eps`` (``factor`` may be traced)."""
    return dataclasses.replace(ball, eps=ball.eps * factor)


def check_norm(norm: str) -> str:
    if norm not in NORMS:
        raise ValueError(f"unknown norm {norm!r}; valid norms: {', '.join(NORMS)}")
    return norm


def _flat(x: jax.Array) -> jax.Array:
    return x.reshape(x.shape[0], -1)


def _per_example(v: jax.Array, x: jax.Array) -> jax.Array:
    """Broadcasts a per-example vector ``[B]`` against a batch shaped like ``x``."""
    return v.reshape((-1,) + (1,) * (x.ndim - 1))


def lp_norm(delta: jax.Array, norm: str) -> jax.Array:
    """Per-example Lp norm of a batch ``[B, ...] -> [B]``."""
    flat = _flat(delta)
    if norm == "linf":
        return jnp.max(jnp.abs(flat), axis=1)
    if norm == "l2":
        return jnp.sqrt(jnp.sum(flat * flat, axis=1))
    if norm == "l1":
        return jnp.sum(jnp.abs(flat), axis=1)
    raise ValueError(f"unknown norm {norm!r}; valid norms: {', '.join(NORMS)}")


def bisect(
    feasible_at, lo: jax.Array, hi: jax.Array, iters: int = _BISECTION_STEPS
) -> tuple[jax.Array, jax.Array]:
    """Bisection for the threshold of a monotone predicate, element-wise; returns the final
    ``(infeasible, feasible)`` ends after ``iters`` halvings.

    ``feasible_at(t)`` must be False at ``lo`` and True at ``hi``.
    """

    def body(_, bounds):
        lo, hi = bounds
        mid = 0.5 * (lo + hi)
        ok = feasible_at(mid)
        return jnp.where(ok, lo, mid), jnp.where(ok, mid, hi)

    return jax.lax.fori_loop(0, iters, body, (lo, hi))


def project_l2_box(d: jax.Array, lo: jax.Array, hi: jax.Array, eps: float) -> jax.Array:
    """Exact projection of ``d [B, D]`` onto ``{||δ||_2 <= eps} ∩ [lo, hi]`` (``lo <= 0 <= hi``)."""
    clipped = jnp.clip(d, lo, hi)
    inside = jnp.sum(clipped**2, axis=1) <= eps**2

    # δ(s) = clip(d / s, lo, hi) with s = 1 + λ >= 1; its norm decreases in s.
    def feasible_at(s):
        delta = jnp.clip(d / s[:, None], lo, hi)
        return jnp.sum(delta**2, axis=1) <= eps**2

    d_norm = jnp.sqrt(jnp.sum(d**2, axis=1))
    s_hi = jnp.maximum(d_norm / jnp.maximum(eps, 1e-30), 1.0) * 1.001 + 1e-6
    _, s = bisect(feasible_at, jnp.ones_like(d_norm), s_hi)
    projected = jnp.clip(d / s[:, None], lo, hi)
    return jnp.where(inside[:, None], clipped, projected)


def project_l1_box(d: jax.Array, lo: jax.Array, hi: jax.Array, eps: float) -> jax.Array:
    """Exact projection of ``d [B, D]`` onto ``{||δ||_1 <= eps} ∩ [lo, hi]`` (``lo <= 0 <= hi``)."""
    clipped = jnp.clip(d, lo, hi)
    inside = jnp.sum(jnp.abs(clipped), axis=1) <= eps

    def shrink(tau):
        soft = jnp.sign(d) * jnp.maximum(jnp.abs(d) - tau[:, None], 0.0)
        return jnp.clip(soft, lo, hi)

    def feasible_at(tau):
        return jnp.sum(jnp.abs(shrink(tau)), axis=1) <= eps

    tau_hi = jnp.max(jnp.abs(d), axis=1)
    _, tau = bisect(feasible_at, jnp.zeros_like(tau_hi), tau_hi)
    return jnp.where(inside[:, None], clipped, shrink(tau))


def clip_box(x: jax.Array, bounds: tuple[float, float] | None) -> jax.Array:
    """``x`` clipped to the box ``bounds = (lo, hi)``; ``x`` itself for ``None``."""
    return x if bounds is None else jnp.clip(x, bounds[0], bounds[1])


@dataclasses.dataclass(frozen=True)
class LpBall:
    """``B_p(x, eps) ∩ [lo, hi]^D`` with its init, steepest-ascent direction and projection.

    Attributes:
      norm: "linf", "l2" or "l1".
      eps: radius of the ball (>= 0).
      l1_sparsity: fraction of coordinates moved by one L1 step (top-k of ``|grad|``).
      bounds: the box ``(lo, hi)``, ``(0, 1)`` for images; ``None``: no box.
    """

    norm: str
    eps: float
    l1_sparsity: float = 0.01
    bounds: tuple[float, float] | None = (0.0, 1.0)

    def __post_init__(self):
        check_norm(self.norm)
        if is_concrete(self.eps) and not self.eps >= 0:
            raise ValueError(f"eps must be >= 0, got {self.eps}")
        if not 0 < self.l1_sparsity <= 1:
            raise ValueError(f"l1_sparsity must be in (0, 1], got {self.l1_sparsity}")
        if self.bounds is not None:
            lo, hi = (float(b) for b in self.bounds)
            if not lo < hi:
                raise ValueError(f"bounds (lo, hi) need lo < hi, got {self.bounds}")
            object.__setattr__(self, "bounds", (lo, hi))

    def init(self, key: jax.Array, x: jax.Array) -> jax.Array:
        """A random point of the ball ∩ box around ``x``.

        ``key`` is one key for the batch, or one key per example (shape ``[B]``): per-example keys
        give the same draw for an example whatever batch (or device shard) it is in.
        """
        if key.ndim == 1:
            return jax.vmap(lambda k, xi: self.init(k, xi[None])[0])(key, x)
        flat = _flat(x)
        dim = flat.shape[1]
        if self.norm == "linf":
            delta = jax.random.uniform(key, flat.shape, minval=-self.eps, maxval=self.eps)
        elif self.norm == "l2":
            k_dir, k_rad = jax.random.split(key)
            g = jax.random.normal(k_dir, flat.shape)
            g = g / jnp.linalg.norm(g, axis=1, keepdims=True)
            radius = self.eps * jax.random.uniform(k_rad, (flat.shape[0], 1)) ** (1.0 / dim)
            delta = g * radius
        else:  # Uniform in the L1 ball: Dirichlet(1, ..., 1) on D+1 coordinates, random signs.
            k_exp, k_sign = jax.random.split(key)
            e = jax.random.exponential(k_exp, (flat.shape[0], dim + 1))
            signs = jax.random.rademacher(k_sign, flat.shape, dtype=flat.dtype)
            delta = self.eps * signs * e[:, :dim] / jnp.sum(e, axis=1, keepdims=True)
        # Clipping to the box only shrinks |δ_i| (lo <= 0 <= hi), so the point stays in the ball.
        return clip_box(flat + delta, self.bounds).reshape(x.shape)

    def direction(self, grad: jax.Array, x_adv: jax.Array) -> jax.Array:
        """Unit-norm steepest-ascent direction ``argmax_{||v||_p <= 1} <grad, v>``."""
        if self.norm == "linf":
            return jnp.sign(grad)
        flat = _flat(grad)
        if self.norm == "l2":
            norm = jnp.sqrt(jnp.sum(flat * flat, axis=1, keepdims=True))
            return (flat / jnp.maximum(norm, 1e-12)).reshape(grad.shape)
        # L1: move the k coordinates with the largest |grad| that can still move inside the box.
        xf = _flat(x_adv)
        if self.bounds is None:
            movable = flat != 0
        else:
            movable = ((flat > 0) & (xf < self.bounds[1])) | ((flat < 0) & (xf > self.bounds[0]))
        score = jnp.where(movable, jnp.abs(flat), -1.0)
        k = max(1, math.ceil(self.l1_sparsity * flat.shape[1]))
        kth = jax.lax.top_k(score, k)[0][:, -1:]
        chosen = (score >= kth) & movable
        count = jnp.maximum(jnp.sum(chosen, axis=1, keepdims=True), 1)
        return (jnp.sign(flat) * chosen / count).reshape(grad.shape)

    def project(self, x_adv: jax.Array, x: jax.Array) -> jax.Array:
        """Exact Euclidean projection of ``x_adv`` onto ``B_p(x, eps) ∩ [lo, hi]^D``."""
        if is_concrete(self.eps) and self.eps == 0:
            return clip_box(x, self.bounds)
        if self.norm == "linf":
            low, high = x - self.eps, x + self.eps
            if self.bounds is not None:
                low, high = jnp.maximum(low, self.bounds[0]), jnp.minimum(high, self.bounds[1])
            return optax.projections.projection_box(x_adv, low, high)
        xf = _flat(x)
        if self.bounds is None:
            d, lo, hi = _flat(x_adv) - xf, jnp.full_like(xf, -jnp.inf), jnp.full_like(xf, jnp.inf)
        else:
            d, lo, hi = _flat(x_adv) - xf, self.bounds[0] - xf, self.bounds[1] - xf
        if self.norm == "l2":
            delta = project_l2_box(d, lo, hi, self.eps)
        else:
            delta = project_l1_box(d, lo, hi, self.eps)
        return (xf + delta).reshape(x.shape)

    def contains(self, x_adv: jax.Array, x: jax.Array, atol: float = 1e-5) -> jax.Array:
        """Per-example membership test (within ``atol``)."""
        if self.bounds is None:
            in_box = jnp.ones(x_adv.shape[0], bool)
        else:
            lo, hi = self.bounds
            in_box = jnp.all((_flat(x_adv) >= lo - atol) & (_flat(x_adv) <= hi + atol), axis=1)
        return in_box & (
            lp_norm(x_adv - x, self.norm) <= self.eps + atol * jnp.maximum(1.0, self.eps)
        )
