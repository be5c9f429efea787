"""RayS (Chen & Gu, KDD 2020): hard-label Linf attack by ray searching.

Only the predicted label ``argmax model(x)`` is used. RayS looks for the sign direction
``v in {-1, +1}^D`` whose ray ``clip(x + r v, 0, 1)`` crosses the decision boundary at the
smallest radius ``r`` (the Linf size of the step, before clipping)::

    v = (1, ..., 1), r_best = inf
    for level = 0, 1, 2, ...: for each of the 2**level blocks (contiguous in C, H, W order):
        v' = v with the block's signs flipped
        if the point at r_best along v' is adversarial (at r = 1, the box corner, while r_best is
            infinite): bisect [0, r_best] for the boundary along v' to tolerance tol
            if the boundary radius < r_best: v, r_best = v', that radius
    stop once ||clip(x + r_best v, 0, 1) - x||_inf <= eps or the query budget is spent

Fixed shapes: one model query per loop iteration for the whole batch; each example advances its
own state machine (check a direction / one bisection step), its own block index and its own
query count, and stops (masked) once it is within ``eps`` or out of queries. The loop is a
``lax.while_loop`` that exits when every example has stopped.

Result: ``success`` = an adversarial point with Linf distance ``<= eps`` was found (or ``x``
itself is misclassified); ``x_adv`` is then that point (on the decision boundary within the
bisection tolerance, in ``[0, 1]``); otherwise ``x_adv = x``. ``loss`` is ``-dist``, minus the
Linf distance of the best adversarial point found (0 when ``x`` is misclassified, ``-inf`` when
none was found), so the average decision-boundary distance (ADBD) of the paper is ``-loss`` when
run with ``eps = 0``.

Deviations from uclaml/RayS (``RayS.py`` / ``RayS_Single.py``): the first query of every example
checks the clean ``x`` (already misclassified: success, ``x_adv = x``); while no direction has
succeeded yet a direction is checked with one query at the box corner (the reference's line search
queries ``r = 1 .. 10``, which all clip to the same corner); every example follows its own block
schedule (as the single-example reference; the batched reference shares it); the key is unused
(RayS is deterministic).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from advjax.attacks.base import (
    AttackResult,
    ModelFn,
    QueryAttack,
    check_nonnegative,
    is_label_vector,
    validated,
)


def _is_adversarial(logits: jax.Array, y: jax.Array, targeted: bool) -> jax.Array:
    pred = jnp.argmax(logits, axis=-1)
    return pred == y if targeted else pred != y


@dataclasses.dataclass(frozen=True)
class RayS(QueryAttack):
    """RayS hard-label Linf attack (Chen & Gu 2020, Alg. 1-3).

    Attributes:
      eps: Linf radius; an example stops once a boundary point within ``eps`` is found.
      steps: model queries per example (one per step, the clean check included).
      targeted: search for the class ``y`` instead of leaving it.
      tol: bisection tolerance on the ray length ``||r v||_2 = r sqrt(D)``, as in the reference
        (an Linf tolerance of ``tol / sqrt(D)``).
    """

    eps: float
    steps: int
    targeted: bool
    tol: float

    def __post_init__(self):
        check_nonnegative(eps=self.eps, steps=self.steps)
        if int(self.steps) != self.steps or self.steps < 1:
            raise ValueError(f"steps must be a positive integer, got {self.steps}")
        if not self.tol > 0:
            raise ValueError(f"tol must be > 0, got {self.tol}")

    def scaled(self, factor: Any) -> RayS:
        return dataclasses.replace(self, eps=self.eps * factor)

    @validated
    def run_with_queries(
        self, model_fn: ModelFn, variables: Any, x: jax.Array, y: Any, key: jax.Array
    ) -> tuple[AttackResult, jax.Array]:
        """``run`` plus the per-example number of model queries spent (int32 ``[B]``)."""
        del key  # RayS is deterministic.
        if not is_label_vector(y):
            raise ValueError(
                "RayS needs integer labels y of shape [batch] (target labels when targeted), "
                f"got {getattr(y, 'shape', type(y).__name__)}"
            )
        batch, height, width, channels = x.shape
        dim = height * width * channels
        # Flat index of each NHWC element in the reference's (C, H, W) order: blocks are
        # contiguous runs of that order.
        order = jnp.asarray(
            np.arange(dim, dtype=np.int32).reshape(channels, height, width).transpose(1, 2, 0)
        )
        max_level = max(math.ceil(math.log2(dim)), 0)  # from here on, blocks are single pixels
        tol = self.tol / math.sqrt(dim)
        x = jax.lax.stop_gradient(x)

        def bcast(v):
            return v[:, None, None, None]

        def point(direction, radius):
            signs = jnp.where(direction, 1.0, -1.0).astype(x.dtype)
            return jnp.clip(x + bcast(radius).astype(x.dtype) * signs, 0.0, 1.0)

        def distance(direction, radius):
            found = jnp.isfinite(radius)
            gap = jnp.abs(point(direction, jnp.where(found, radius, 0.0)) - x)
            return jnp.where(found, jnp.max(gap.reshape(batch, -1), axis=1), jnp.inf)

        def block(level, index):
            size = (dim - 1) // (1 << level) + 1  # ceil(dim / 2**level)
            start = index * size
            end = jnp.minimum(start + size, dim)
            inside = (order >= bcast(start)) & (order < bcast(end))
            return inside, end

        clean = _is_adversarial(model_fn(variables, x), y, self.targeted)
        zeros = jnp.zeros(batch, x.dtype)
        state = dict(
            t=jnp.asarray(1, jnp.int32),  # queries spent by every still-active example
            queries=jnp.ones(batch, jnp.int32),
            done=clean,
            direction=jnp.ones(x.shape, bool),  # True: +1
            radius=jnp.full(batch, jnp.inf, x.dtype),
            searching=jnp.zeros(batch, bool),  # bisecting along the candidate direction
            lo=zeros,
            hi=zeros,
            level=jnp.zeros(batch, jnp.int32),
            index=jnp.zeros(batch, jnp.int32),
        )
        steps = int(self.steps)

        def cond(s):
            return (s["t"] < steps) & jnp.any(~s["done"])

        def body(s):
            active = ~s["done"]
            flip, end = block(s["level"], s["index"])
            candidate = s["direction"] ^ flip
            check_radius = jnp.where(jnp.isfinite(s["radius"]), s["radius"], 1.0)
            r = jnp.where(s["searching"], 0.5 * (s["lo"] + s["hi"]), check_radius)
            adv = _is_adversarial(model_fn(variables, point(candidate, r)), y, self.targeted)

            # Check phase: an adversarial candidate starts a bisection on [0, r].
            start = ~s["searching"] & adv
            lo = jnp.where(start, 0.0, jnp.where(s["searching"] & ~adv, r, s["lo"]))
            hi = jnp.where(start | (s["searching"] & adv), r, s["hi"])
            searching = s["searching"] | start
            finished = searching & (hi - lo <= tol)
            improved = finished & (hi < s["radius"])
            next_block = (~s["searching"] & ~adv) | finished
            # Next block: the following one of this level, or the first of the next level.
            index = s["index"] + 1
            wrap = (index == (1 << s["level"])) | (end == dim)
            level = jnp.where(wrap, jnp.minimum(s["level"] + 1, max_level), s["level"])
            index = jnp.where(wrap, 0, index)

            radius = jnp.where(improved, hi, s["radius"])
            direction = jnp.where(bcast(improved), candidate, s["direction"])
            within = jnp.isfinite(radius) & (distance(direction, radius) <= self.eps)
            new = dict(
                t=s["t"] + 1,
                queries=s["queries"] + active.astype(jnp.int32),
                done=s["done"] | within,
                direction=direction,
                radius=radius,
                searching=searching & ~finished,
                lo=lo,
                hi=hi,
                level=jnp.where(next_block, level, s["level"]),
                index=jnp.where(next_block, index, s["index"]),
            )
            # Examples that stopped keep their state.
            return {
                k: v if k == "t" else jnp.where(bcast(active) if v.ndim == 4 else active, v, s[k])
                for k, v in new.items()
            }

        s = jax.lax.while_loop(cond, body, state)
        dist = jnp.where(clean, 0.0, distance(s["direction"], s["radius"]))
        ok = clean | (dist <= self.eps)
        found = point(s["direction"], jnp.where(jnp.isfinite(s["radius"]), s["radius"], 0.0))
        x_adv = jnp.where(bcast(ok & ~clean), found, x)
        return AttackResult(x_adv=x_adv, loss=-dist, success=ok), s["queries"]


def rays(eps: float, steps: int = 10000, *, targeted: bool = False, tol: float = 1e-3) -> RayS:
    """RayS (Chen & Gu, KDD 2020): hard-label Linf attack, 10,000 queries (``steps``, one query
    each) by default; targeted: ``y`` are the targets.

    ``attack.run_with_queries(...)`` also returns the per-example number of queries.
    """
    return RayS(eps=eps, steps=steps, targeted=targeted, tol=tol)
