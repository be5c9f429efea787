"""The Brendel & Bethge attack, Linf (B&B; Brendel et al., NeurIPS 2019, "Accurate, reliable and
fast robustness evaluation").

A minimum-norm attack that walks along the decision boundary. From an adversarial starting point
(here PGD with a large budget), a binary search finds the boundary between it and the clean point
``x0``; then every step

1. estimates the boundary's normal ``b``: the gradient of the logit difference
   ``ld = f_y(x) - max_{k != y} f_k(x)`` (``ld < 0``: adversarial), averaged over steps with
   ``momentum``;
2. aims for the linearised boundary with an overshoot, ``c = -overshoot * ld`` outside the
   adversarial region and ``-(2 - overshoot) * ld`` inside it;
3. solves the trust-region problem

       min_delta ||x + delta - x0||_inf  s.t.  b . delta = c, ||delta||_2 <= r, 0 <= x + delta <= 1

   and, where the linearised boundary is out of reach, takes the largest step towards it within
   the trust region and the box;

and the smallest adversarial point met is kept. The radius is ``r = step_size * d`` (``d`` the
number of input values; foolbox's ``lr``), with ``step_size`` halved ``num_decays`` times at
regular intervals.

The subproblem is solved by bisection, which is exact up to its tolerance: for a Linf radius
``t``, the problem is feasible iff the point of the box ``[-t, t] & [0, 1] - x0`` on the
hyperplane closest to the current perturbation, ``clip(p + lam b)`` with ``lam`` found by a
second bisection, lies within ``r``; feasibility grows with ``t``. The reference implementation
(foolbox) solves the same problem through its dual with a box-constrained BFGS.

Differences from foolbox 3's ``LinfinityBrendelBethgeAttack``: foolbox scales ``r`` by the number
of values in the whole batch, so its step depends on the batch size; here ``d`` is per example.
Foolbox's default start is a blended-noise search; here it is PGD (the UDR document's setting,
after Tramer et al. 2020: B&B started from PGD-20 with step eps/2), run with the budget
``init_eps`` (default: the whole image box, so that it almost always finds a start). Points without
an adversarial start are not attacked (``success`` False, ``loss`` ``-inf``).

Output convention: that of the other minimum-norm attacks (``advjax.attacks.minimum_norm``):
``success`` when the smallest adversarial found has ``||x_adv - x||_inf <= eps`` (any norm when
``eps`` is None), ``loss`` minus its norm.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp

from advjax.attacks.base import AttackResult, ModelFn, check_nonnegative, validated
from advjax.attacks.gradient import pgd
from advjax.attacks.minimum_norm import (
    MinimumNormAttack,
    check_eps,
    check_int,
    check_labels,
    finalize,
    is_adversarial,
    per_example,
)
from advjax.threats.lp import bisect, lp_norm

# log-space search interval for the multipliers of unit-normal steps (distances in [0, 1]^d)
_LOG_LO, _LOG_HI = math.log(1e-9), math.log(1e6)


def _hyperplane_point(p, g, target, lower, upper, iters):
    """``clip(p + lam g, lower, upper)`` with ``g . d = target`` (``g`` of unit norm): the point of
    the box on the hyperplane closest to ``p``; and whether the hyperplane meets the box."""
    reach_min = jnp.sum(jnp.where(g > 0, g * lower, g * upper))
    reach_max = jnp.sum(jnp.where(g > 0, g * upper, g * lower))
    reachable = (reach_min <= target) & (target <= reach_max)
    sign = jnp.where(g @ jnp.clip(p, lower, upper) <= target, 1.0, -1.0)

    def point(log_lam):
        return jnp.clip(p + sign * jnp.exp(log_lam) * g, lower, upper)

    _, log_lam = bisect(lambda u: sign * (g @ point(u) - target) >= 0, _LOG_LO, _LOG_HI, iters)
    return point(log_lam), reachable


def solve_linf_step(
    x0: jax.Array, x: jax.Array, b: jax.Array, c: jax.Array, r: jax.Array, iters: int = 20
) -> jax.Array:
    """One B&B step for flat vectors: ``delta`` minimising ``||x + delta - x0||_inf`` subject to
    ``b . delta = c``, ``||delta||_2 <= r`` and ``0 <= x + delta <= 1``; where that is infeasible,
    the step within the trust region and the box that moves ``b . delta`` furthest towards ``c``.
    Bisection with ``iters`` halvings for the Linf radius and ``1.5 iters`` for the multipliers."""
    b_norm = jnp.linalg.norm(b)
    g = b / jnp.maximum(b_norm, 1e-30)
    p = x - x0
    # The constraint as a hyperplane in the new perturbation d = p + delta: g . d = target.
    target = (c + b @ p) / jnp.maximum(b_norm, 1e-30)
    lower, upper = -x0, 1.0 - x0
    inner = (3 * iters) // 2

    def at_radius(t):
        d, reachable = _hyperplane_point(
            p, g, target, jnp.maximum(lower, -t), jnp.minimum(upper, t), inner
        )
        return d, reachable & (jnp.linalg.norm(d - p) <= r)

    t_max = jnp.max(jnp.maximum(-lower, upper))
    _, feasible = at_radius(t_max)
    _, t = bisect(lambda t: at_radius(t)[1], jnp.zeros_like(t_max), t_max, iters)
    d_best, _ = at_radius(t)

    # Out of reach: the largest step towards the hyperplane within the trust region and the box.
    direction = jnp.where(target >= g @ p, 1.0, -1.0) * g

    def towards(log_tau):
        return jnp.clip(p + jnp.exp(log_tau) * direction, lower, upper) - p

    log_tau, _ = bisect(
        lambda u: jnp.linalg.norm(towards(u)) > r, jnp.asarray(_LOG_LO), jnp.asarray(_LOG_HI), inner
    )
    corner = jnp.linalg.norm(towards(_LOG_HI)) <= r
    d_reach = p + towards(jnp.where(corner, _LOG_HI, log_tau))
    d = jnp.where(feasible, d_best, d_reach)
    return jnp.where(b_norm > 0, d - p, jnp.zeros_like(p))


def logit_difference(logits: jax.Array, y: jax.Array, targeted: bool) -> jax.Array:
    """``f_y - max_{k != y} f_k`` (untargeted) or ``max_{k != t} f_k - f_t`` (targeted): negative
    exactly where the point is adversarial."""
    onehot = jax.nn.one_hot(y, logits.shape[-1], dtype=bool)
    own = jnp.sum(jnp.where(onehot, logits, 0.0), axis=-1)
    other = jnp.max(jnp.where(onehot, -jnp.inf, logits), axis=-1)
    return other - own if targeted else own - other


@dataclasses.dataclass(frozen=True)
class BrendelBethge(MinimumNormAttack):
    """Linf Brendel & Bethge (see the module docstring).

    Attributes:
      eps: optional Linf budget of ``success``.
      step_size: trust-region radius per input value: the radius is ``step_size * d``
        (foolbox's ``lr``, default 1e-3).
      steps: boundary steps (the UDR document: 200; foolbox's default 1000).
      step_size_decay, num_decays: ``step_size`` is multiplied by ``step_size_decay``
        ``num_decays`` times at regular intervals (foolbox's ``lr_decay = 0.5``,
        ``lr_num_decay = 20``).
      momentum: averaging of the boundary normal over steps.
      overshoot: aim ``overshoot`` times past the linearised boundary (1 = onto it).
      binary_search_steps: halvings of the search between the start and ``x0``.
      init_eps, init_steps, init_step_size: the PGD start (step ``init_eps / 2`` by default).
      solver_steps: bisection halvings of the trust-region subproblem.
      targeted: ``y`` holds target classes.
    """

    eps: float | None
    step_size: float
    steps: int
    step_size_decay: float
    num_decays: int
    momentum: float
    overshoot: float
    binary_search_steps: int
    init_eps: float
    init_steps: int
    init_step_size: float | None
    solver_steps: int
    targeted: bool

    def __post_init__(self):
        check_int("steps", self.steps, 1)
        check_int("num_decays", self.num_decays, 1)
        check_int("binary_search_steps", self.binary_search_steps, 0)
        check_int("init_steps", self.init_steps, 1)
        check_int("solver_steps", self.solver_steps, 1)
        check_nonnegative(step_size=self.step_size, init_eps=self.init_eps)
        if not 0 < self.step_size_decay <= 1:
            raise ValueError(f"step_size_decay must be in (0, 1], got {self.step_size_decay}")
        if not 0 <= self.momentum < 1:
            raise ValueError(f"momentum must be in [0, 1), got {self.momentum}")
        if not 1 <= self.overshoot < 2:
            raise ValueError(f"overshoot must be in [1, 2), got {self.overshoot}")
        check_eps(self.eps)

    def _start(self, model_fn, variables, x, y, key):
        """The PGD start and the boundary point between it and ``x`` (Linf binary search)."""
        step = self.init_step_size if self.init_step_size is not None else self.init_eps / 2
        init = pgd(self.init_eps, step, self.init_steps, targeted=self.targeted, unroll=False)
        start = init.run(model_fn, variables, x, y, key)
        found = is_adversarial(model_fn(variables, start.x_adv), y, self.targeted)
        delta = start.x_adv - x

        def at(radius):
            r = per_example(radius, x)
            return x + jnp.clip(delta, -r, r)

        def halve(_, bounds):
            lo, hi = bounds
            mid = (lo + hi) / 2
            adv = is_adversarial(model_fn(variables, at(mid)), y, self.targeted)
            return jnp.where(adv, lo, mid), jnp.where(adv, mid, hi)

        radius = lp_norm(delta, "linf")
        _, hi = jax.lax.fori_loop(
            0, self.binary_search_steps, halve, (jnp.zeros_like(radius), radius)
        )
        return at(hi), found

    @validated
    def run(
        self, model_fn: ModelFn, variables: Any, x: jax.Array, y: Any, key: jax.Array
    ) -> AttackResult:
        check_labels(y, x)
        x = jax.lax.stop_gradient(x)
        x_start, found = self._start(model_fn, variables, x, y, key)
        dim = math.prod(x.shape[1:])
        interval = max(1, self.steps // self.num_decays)
        solve = jax.vmap(lambda *a: solve_linf_step(*a, iters=self.solver_steps))

        def diff_and_normal(z):
            def total(z):
                ld = logit_difference(model_fn(variables, z), y, self.targeted)
                return jnp.sum(ld), ld

            normal, ld = jax.grad(total, has_aux=True)(z)
            return ld, normal

        def record(z, ld, best_x, best_n):
            dist = lp_norm(z - x, "linf")
            take = found & (ld < 0) & (dist < best_n)
            return jnp.where(per_example(take, x), z, best_x), jnp.where(take, dist, best_n)

        def step(carry, i):
            z, normal_avg, best_x, best_n = carry
            ld, normal = diff_and_normal(z)
            best_x, best_n = record(z, ld, best_x, best_n)
            normal_avg = jnp.where(
                i == 0, normal, (1 - self.momentum) * normal + self.momentum * normal_avg
            )
            # foolbox's decay points
            lr = self.step_size * self.step_size_decay ** ((i + 2) // interval)
            c = jnp.where(ld > 0, -self.overshoot * ld, -(2 - self.overshoot) * ld)
            flat = lambda v: v.reshape(v.shape[0], -1)  # noqa: E731
            radius = jnp.full_like(ld, lr * dim)
            delta = solve(flat(x), flat(z), flat(normal_avg), c, radius).reshape(x.shape)
            z = jnp.where(per_example(found, x), jnp.clip(z + delta, 0.0, 1.0), z)
            return (z, normal_avg, best_x, best_n), None

        inf = jnp.full(x.shape[:1], jnp.inf, x.dtype)
        carry = (x_start, jnp.zeros_like(x), x, inf)
        (z, _, best_x, best_n), _ = jax.lax.scan(step, carry, jnp.arange(self.steps))
        ld = logit_difference(model_fn(variables, z), y, self.targeted)
        best_x, best_n = record(z, ld, best_x, best_n)
        # The start itself (the binary search's adversarial end) counts as well.
        ld0 = logit_difference(model_fn(variables, x_start), y, self.targeted)
        best_x, best_n = record(x_start, ld0, best_x, best_n)
        clean_adv = is_adversarial(model_fn(variables, x), y, self.targeted)
        return finalize(
            model_fn, variables, x, y, self.targeted, best_x, best_n, clean_adv, self.eps
        )


def brendel_bethge(
    eps: float | None = None,
    step_size: float = 1e-3,
    steps: int = 200,
    *,
    step_size_decay: float = 0.5,
    num_decays: int = 20,
    momentum: float = 0.8,
    overshoot: float = 1.1,
    binary_search_steps: int = 10,
    init_eps: float = 1.0,
    init_steps: int = 20,
    init_step_size: float | None = None,
    solver_steps: int = 20,
    targeted: bool = False,
) -> BrendelBethge:
    """Linf B&B with the UDR document's 200 steps (foolbox defaults otherwise); the PGD start
    steps ``init_eps / 2`` when ``init_step_size`` is None."""
    return BrendelBethge(
        eps=eps,
        step_size=step_size,
        steps=steps,
        step_size_decay=step_size_decay,
        num_decays=num_decays,
        momentum=momentum,
        overshoot=overshoot,
        binary_search_steps=binary_search_steps,
        init_eps=init_eps,
        init_steps=init_steps,
        init_step_size=init_step_size,
        solver_steps=solver_steps,
        targeted=targeted,
    )
