"""The Brendel & Bethge attack, Linf, L2 and L1 (B&B; Brendel et al., NeurIPS 2019, "Accurate,
reliable and fast robustness evaluation").

A minimum-norm attack that walks along the decision boundary. From an adversarial starting point
(here PGD with a large budget, in the attack's norm), a binary search finds the boundary between
it and the clean point ``x0``; then every step

1. estimates the boundary's normal ``b``: the gradient of the logit difference
   ``ld = f_y(x) - max_{k != y} f_k(x)`` (``ld < 0``: adversarial), averaged over steps with
   ``momentum``;
2. aims for the linearised boundary with an overshoot, ``c = -overshoot * ld`` outside the
   adversarial region and ``-(2 - overshoot) * ld`` inside it;
3. solves the trust-region problem (``p`` = ``inf``, 2 or 1: the attack's ``norm``)

       min_delta ||x + delta - x0||_p  s.t.  b . delta = c, ||delta||_2 <= r, 0 <= x + delta <= 1

   and, where the linearised boundary is out of reach, takes the largest step towards it within
   the trust region and the box;

and the smallest adversarial point met is kept. The radius is ``r = step_size * d`` (``d`` the
number of input values; foolbox's ``lr``), with ``step_size`` halved ``num_decays`` times at
regular intervals.

Each norm's subproblem is solved exactly up to a tolerance by fixed-iteration bisection
(``solve_linf_step``, ``solve_l2_step``, ``solve_l1_step``; their docstrings give the
derivations). Writing ``d = x + delta - x0`` for the new perturbation and ``C`` for the
hyperplane ``b . delta = c`` intersected with the box, every solver uses the same scalar
primitive: the point of ``C`` closest to a point ``q`` is ``clip(q + lam b)`` with ``lam`` found
by bisection (``_hyperplane_point``); the problem is feasible iff the point of ``C`` closest to
the current perturbation lies within ``r`` (foolbox's ``_minimum_norm_to_boundary`` test). The
reference implementation (foolbox 3) solves Linf and L1 through their duals with a
box-constrained BFGS, and L2 with an active-set heuristic.

Differences from foolbox 3's ``LinfinityBrendelBethgeAttack`` / ``L2BrendelBethgeAttack`` /
``L1BrendelBethgeAttack``: foolbox scales ``r`` by the number of values in the whole batch, so
its step depends on the batch size; here ``d`` is per example. Foolbox's default start is a
blended-noise search; here it is PGD in the attack's norm (the UDR document's setting, after
Tramer et al. 2020: B&B started from PGD-20 with step eps/2), run with the budget ``init_eps``
(default: the whole image box, ``1`` in Linf, ``sqrt(d)`` in L2, ``d`` in L1, so that it almost
always finds a start; the L1 PGD moves the top 1% of coordinates per step,
``advjax.threats.lp``). The binary search follows foolbox's paths from the start to ``x0``:
Linf clips the perturbation to a shrinking cube, L2 scales it, L1 soft-thresholds it. Points
without an adversarial start are not attacked (``success`` False, ``loss`` ``-inf``).

Output convention: that of the other minimum-norm attacks (``advjax.attacks.minimum_norm``):
``success`` when the smallest adversarial found has ``||x_adv - x||_p <= eps`` (any norm when
``eps`` is None), ``loss`` minus its norm.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp

from advjax.attacks.base import Attack, AttackResult, ModelFn, check_nonnegative, validated
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
from advjax.threats.lp import bisect, check_norm, lp_norm

# log-space search interval for the multipliers of unit-normal steps (distances in [0, 1]^d)
_LOG_LO, _LOG_HI = math.log(1e-9), math.log(1e6)
# The L1 solver's largest soft threshold: its L1 excess is at most r^2 / (2 * 100) (see
# ``solve_l1_step``); larger ones lose the current point's digits in float32 (at 1e4 the excess
# measured against cvxopt grew 200-fold).
_L1_LOG_TAU_MAX = math.log(1e2)


def _hyperplane_point(p, g, target, lower, upper, iters, tau=None):
    """``clip(p + lam g, lower, upper)`` with ``g . d = target`` (``g`` of unit norm): the point of
    the box on the hyperplane closest to ``p``; and whether the hyperplane meets the box.

    With a soft threshold ``tau``, ``clip(soft(p + lam g, tau))``: the minimiser of
    ``tau ||d||_1 + ||d - p||_2^2 / 2`` over the same set (per coordinate, the clipped proximal
    map of ``tau |.|``). Both are monotone in ``lam``, found by bisection in ``log |lam|``."""
    reach_min = jnp.sum(jnp.where(g > 0, g * lower, g * upper))
    reach_max = jnp.sum(jnp.where(g > 0, g * upper, g * lower))
    reachable = (reach_min <= target) & (target <= reach_max)

    def shrink(v):
        if tau is not None:
            v = jnp.sign(v) * jnp.maximum(jnp.abs(v) - tau, 0.0)
        return jnp.clip(v, lower, upper)

    sign = jnp.where(g @ shrink(p) <= target, 1.0, -1.0)

    def point(log_lam):
        return shrink(p + sign * jnp.exp(log_lam) * g)

    lo, hi = _LOG_LO, _LOG_HI
    if tau is not None:  # the threshold must be overcome before the hyperplane is reached
        lo, hi = jnp.asarray(lo), _LOG_HI + jnp.log1p(tau)
    _, log_lam = bisect(lambda u: sign * (g @ point(u) - target) >= 0, lo, hi, iters)
    return point(log_lam), reachable


def _hyperplane(x0, x, b, c):
    """The subproblem in the new perturbation ``d = x + delta - x0``: the unit normal ``g``, the
    current perturbation ``p = x - x0``, the hyperplane ``g . d = target`` and the box."""
    b_norm = jnp.linalg.norm(b)
    g = b / jnp.maximum(b_norm, 1e-30)
    p = x - x0
    target = (c + b @ p) / jnp.maximum(b_norm, 1e-30)
    return b_norm, g, p, target, -x0, 1.0 - x0


def _towards_hyperplane(p, g, target, lower, upper, r, iters):
    """Where the hyperplane is out of reach: ``clip(p + tau s g)`` (``s`` the side of the
    hyperplane) with the largest ``tau`` within ``||d - p||_2 <= r``. By the KKT conditions this
    maximises ``s g . d`` over the trust region and the box (foolbox's
    ``optimize_boundary_s_t_trustregion``, whatever the norm)."""
    direction = jnp.where(target >= g @ p, 1.0, -1.0) * g

    def towards(log_tau):
        return jnp.clip(p + jnp.exp(log_tau) * direction, lower, upper) - p

    log_tau, _ = bisect(
        lambda u: jnp.linalg.norm(towards(u)) > r, jnp.asarray(_LOG_LO), jnp.asarray(_LOG_HI), iters
    )
    corner = jnp.linalg.norm(towards(_LOG_HI)) <= r
    return p + towards(jnp.where(corner, _LOG_HI, log_tau))


def _along_multiplier_path(at, ends, p, g, target, lower, upper, r, iters):
    """The L2 and L1 steps' solution in ``d``: ``at(u)`` are the Lagrangian's minimisers over
    ``C``, from ``ends[0]`` (the norm's own minimiser, trust region ignored) to ``ends[1]`` (the
    point of ``C`` closest to ``p``), with ``||at(u) - p||`` monotone along the way. Feasible iff
    the closest point of ``C`` lies within ``r``; then ``at(ends[0])`` when that lies within
    ``r``, else ``at(u)`` at the bisected ``u`` where the path enters the trust region; where
    infeasible, the largest step towards the hyperplane."""
    inner = (3 * iters) // 2
    closest, reachable = _hyperplane_point(p, g, target, lower, upper, inner)
    feasible = reachable & (jnp.linalg.norm(closest - p) <= r)
    d_free = at(ends[0])
    # bisect's ends: the infeasible one first
    _, u = bisect(lambda u: jnp.linalg.norm(at(u) - p) <= r, ends[0], ends[1], iters)
    d_best = jnp.where(jnp.linalg.norm(d_free - p) <= r, d_free, at(u))
    d_reach = _towards_hyperplane(p, g, target, lower, upper, r, inner)
    return jnp.where(feasible, d_best, d_reach)


def solve_linf_step(
    x0: jax.Array, x: jax.Array, b: jax.Array, c: jax.Array, r: jax.Array, iters: int = 20
) -> jax.Array:
    """One B&B step for flat vectors: ``delta`` minimising ``||x + delta - x0||_inf`` subject to
    ``b . delta = c``, ``||delta||_2 <= r`` and ``0 <= x + delta <= 1``; where that is infeasible,
    the step within the trust region and the box that moves ``b . delta`` furthest towards ``c``.

    For a Linf radius ``t`` the problem is feasible iff the point of the box
    ``[-t, t] & [0, 1] - x0`` on the hyperplane closest to the current perturbation lies within
    ``r``; feasibility grows with ``t``, so a bisection over ``t`` finds the smallest one.
    Bisection with ``iters`` halvings for the Linf radius and ``1.5 iters`` for the
    multipliers."""
    b_norm, g, p, target, lower, upper = _hyperplane(x0, x, b, c)
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
    d_reach = _towards_hyperplane(p, g, target, lower, upper, r, inner)
    d = jnp.where(feasible, d_best, d_reach)
    return jnp.where(b_norm > 0, d - p, jnp.zeros_like(p))


def solve_l2_step(
    x0: jax.Array, x: jax.Array, b: jax.Array, c: jax.Array, r: jax.Array, iters: int = 20
) -> jax.Array:
    """One B&B step for flat vectors: ``delta`` minimising ``||x + delta - x0||_2`` subject to
    ``b . delta = c``, ``||delta||_2 <= r`` and ``0 <= x + delta <= 1`` (else the largest step
    towards the hyperplane, as ``solve_linf_step``).

    In ``d = x + delta - x0`` with ``p = x - x0`` and ``C`` the hyperplane within the box: for a
    trust-region multiplier ``mu >= 0`` the Lagrangian's minimiser over ``C`` minimises
    ``||d||^2 + mu ||d - p||^2 = (1 + mu) ||d - s p||^2 + const``, ``s = mu / (1 + mu)``, so it is
    ``d(s) = proj_C(s p) = clip(s p + lam g)``: without the box the closed form
    ``s p + (target - s g . p) g``, with it one scalar bisection for ``lam``. ``||d(s) - p||``
    does not increase with ``s`` (compare the two optimality conditions), and ``s = 1`` gives
    the point of ``C`` closest to ``p``: the problem is feasible iff that lies within ``r``; the
    solution is ``d(0)``, the minimum-norm point of ``C``, when it lies within ``r``, else
    ``d(s)`` at the smallest ``s`` within ``r`` (bisection; there ``||d(s) - p|| = r``, and any
    feasible ``d'`` has ``||d||^2 + mu r^2 <= ||d'||^2 + mu ||d' - p||^2 <= ||d'||^2 + mu r^2``).
    Bisection with ``iters`` halvings for ``s`` and ``1.5 iters`` for the multipliers."""
    b_norm, g, p, target, lower, upper = _hyperplane(x0, x, b, c)
    inner = (3 * iters) // 2

    def at(s):
        return _hyperplane_point(s * p, g, target, lower, upper, inner)[0]

    ends = jnp.zeros_like(r), jnp.ones_like(r)
    d = _along_multiplier_path(at, ends, p, g, target, lower, upper, r, iters)
    return jnp.where(b_norm > 0, d - p, jnp.zeros_like(p))


def solve_l1_step(
    x0: jax.Array, x: jax.Array, b: jax.Array, c: jax.Array, r: jax.Array, iters: int = 20
) -> jax.Array:
    """One B&B step for flat vectors: ``delta`` minimising ``||x + delta - x0||_1`` subject to
    ``b . delta = c``, ``||delta||_2 <= r`` and ``0 <= x + delta <= 1`` (else the largest step
    towards the hyperplane, as ``solve_linf_step``).

    In ``d = x + delta - x0`` with ``p = x - x0`` and ``C`` the hyperplane within the box: for a
    trust-region multiplier ``mu = 1 / tau > 0`` the Lagrangian's minimiser over ``C`` minimises
    ``tau ||d||_1 + ||d - p||^2 / 2``, so it is ``d(tau) = clip(soft(p + lam g, tau))`` (the
    clipped soft threshold, with ``lam`` from one scalar bisection; foolbox fits the same two
    multipliers by BFGS on the dual). ``||d(tau) - p||`` does not decrease with ``tau`` and
    ``tau -> 0`` gives the point of ``C`` closest to ``p``: the problem is feasible iff that lies
    within ``r``. At the largest ``tau`` within ``r`` (bisection in ``log tau``) either
    ``||d(tau) - p|| = r``, and then any feasible ``d'`` has
    ``tau ||d||_1 + r^2 / 2 <= tau ||d'||_1 + ||d' - p||^2 / 2``, so ``d(tau)`` is optimal; or
    ``tau`` is the largest searched (``100``), where the same inequality bounds the excess L1
    norm by ``r^2 / (2 tau)``. Bisection with ``iters`` halvings for ``log tau`` and
    ``1.5 iters`` for the multipliers."""
    b_norm, g, p, target, lower, upper = _hyperplane(x0, x, b, c)
    inner = (3 * iters) // 2

    def at(log_tau):
        return _hyperplane_point(p, g, target, lower, upper, inner, jnp.exp(log_tau))[0]

    ends = jnp.full_like(r, _L1_LOG_TAU_MAX), jnp.full_like(r, _LOG_LO)
    d = _along_multiplier_path(at, ends, p, g, target, lower, upper, r, iters)
    return jnp.where(b_norm > 0, d - p, jnp.zeros_like(p))


_SOLVE = {"linf": solve_linf_step, "l2": solve_l2_step, "l1": solve_l1_step}


def logit_difference(logits: jax.Array, y: jax.Array, targeted: bool) -> jax.Array:
    """``f_y - max_{k != y} f_k`` (untargeted) or ``max_{k != t} f_k - f_t`` (targeted): negative
    exactly where the point is adversarial."""
    onehot = jax.nn.one_hot(y, logits.shape[-1], dtype=bool)
    own = jnp.sum(jnp.where(onehot, logits, 0.0), axis=-1)
    other = jnp.max(jnp.where(onehot, -jnp.inf, logits), axis=-1)
    return other - own if targeted else own - other


def _start_path(delta: jax.Array, norm: str) -> tuple[Any, jax.Array]:
    """foolbox's path from the start (``u = u_max``) to the clean point (``u = 0``): Linf clips
    ``delta`` to ``[-u, u]``, L2 scales it by ``u`` and L1 soft-thresholds it at ``u_max - u``
    (``u_max = ||delta||_inf``); returns ``(path(u), u_max)``."""
    if norm == "l2":
        return lambda u: delta * per_example(u, delta), jnp.ones(delta.shape[:1], delta.dtype)
    top = lp_norm(delta, "linf")
    if norm == "linf":
        return lambda u: jnp.clip(delta, -per_example(u, delta), per_example(u, delta)), top

    def soft(u):
        tau = per_example(top - u, delta)
        return jnp.sign(delta) * jnp.maximum(jnp.abs(delta) - tau, 0.0)

    return soft, top


@dataclasses.dataclass(frozen=True)
class BrendelBethge(MinimumNormAttack):
    """Linf, L2 or L1 Brendel & Bethge (see the module docstring).

    Attributes:
      eps: optional budget of ``success``, in ``norm``.
      norm: "linf", "l2" or "l1": the distance minimised (the trust region is L2 for all).
      step_size: trust-region radius per input value: the radius is ``step_size * d``
        (foolbox's ``lr``, default 1e-3).
      steps: boundary steps (the UDR document: 200; foolbox's default 1000).
      step_size_decay, num_decays: ``step_size`` is multiplied by ``step_size_decay``
        ``num_decays`` times at regular intervals (foolbox's ``lr_decay = 0.5``,
        ``lr_num_decay = 20``).
      momentum: averaging of the boundary normal over steps.
      overshoot: aim ``overshoot`` times past the linearised boundary (1 = onto it).
      binary_search_steps: halvings of the search between the start and ``x0``.
      init_eps, init_steps, init_step_size: the PGD start in ``norm`` (``init_eps`` None: the
        whole image box, ``1`` in Linf, ``sqrt(d)`` in L2, ``d`` in L1; step ``init_eps / 2`` by
        default).
      solver_steps: bisection halvings of the trust-region subproblem.
      targeted: ``y`` holds target classes.
    """

    eps: float | None
    norm: str
    step_size: float
    steps: int
    step_size_decay: float
    num_decays: int
    momentum: float
    overshoot: float
    binary_search_steps: int
    init_eps: float | None
    init_steps: int
    init_step_size: float | None
    solver_steps: int
    targeted: bool

    def __post_init__(self):
        check_norm(self.norm)
        check_int("steps", self.steps, 1)
        check_int("num_decays", self.num_decays, 1)
        check_int("binary_search_steps", self.binary_search_steps, 0)
        check_int("init_steps", self.init_steps, 1)
        check_int("solver_steps", self.solver_steps, 1)
        check_nonnegative(step_size=self.step_size)
        if self.init_eps is not None:
            check_nonnegative(init_eps=self.init_eps)
        if not 0 < self.step_size_decay <= 1:
            raise ValueError(f"step_size_decay must be in (0, 1], got {self.step_size_decay}")
        if not 0 <= self.momentum < 1:
            raise ValueError(f"momentum must be in [0, 1), got {self.momentum}")
        if not 1 <= self.overshoot < 2:
            raise ValueError(f"overshoot must be in [1, 2), got {self.overshoot}")
        check_eps(self.eps)

    def start_attack(self, dim: int) -> Attack:
        """The PGD start for inputs of ``dim`` values (``init_eps`` None: the whole box)."""
        eps = self.init_eps
        if eps is None:
            eps = {"linf": 1.0, "l2": math.sqrt(dim), "l1": float(dim)}[self.norm]
        step = self.init_step_size if self.init_step_size is not None else eps / 2
        return pgd(eps, step, self.init_steps, norm=self.norm, targeted=self.targeted, unroll=False)

    def _start(self, model_fn, variables, x, y, key):
        """The PGD start and the boundary point between it and ``x`` (binary search along
        ``_start_path``)."""
        init = self.start_attack(math.prod(x.shape[1:]))
        start = init.run(model_fn, variables, x, y, key)
        found = is_adversarial(model_fn(variables, start.x_adv), y, self.targeted)
        at, radius = _start_path(start.x_adv - x, self.norm)

        def halve(_, bounds):
            lo, hi = bounds
            mid = (lo + hi) / 2
            adv = is_adversarial(model_fn(variables, x + at(mid)), y, self.targeted)
            return jnp.where(adv, lo, mid), jnp.where(adv, mid, hi)

        _, hi = jax.lax.fori_loop(
            0, self.binary_search_steps, halve, (jnp.zeros_like(radius), radius)
        )
        return x + at(hi), found

    @validated
    def run(
        self, model_fn: ModelFn, variables: Any, x: jax.Array, y: Any, key: jax.Array
    ) -> AttackResult:
        check_labels(y, x)
        x = jax.lax.stop_gradient(x)
        x_start, found = self._start(model_fn, variables, x, y, key)
        dim = math.prod(x.shape[1:])
        interval = max(1, self.steps // self.num_decays)
        solve_step = _SOLVE[self.norm]
        solve = jax.vmap(lambda *a: solve_step(*a, iters=self.solver_steps))

        def diff_and_normal(z):
            def total(z):
                ld = logit_difference(model_fn(variables, z), y, self.targeted)
                return jnp.sum(ld), ld

            normal, ld = jax.grad(total, has_aux=True)(z)
            return ld, normal

        def record(z, ld, best_x, best_n):
            dist = lp_norm(z - x, self.norm)
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
    norm: str = "linf",
    step_size_decay: float = 0.5,
    num_decays: int = 20,
    momentum: float = 0.8,
    overshoot: float = 1.1,
    binary_search_steps: int = 10,
    init_eps: float | None = None,
    init_steps: int = 20,
    init_step_size: float | None = None,
    solver_steps: int = 20,
    targeted: bool = False,
) -> BrendelBethge:
    """B&B in ``norm`` (Linf, L2 or L1) with the UDR document's 200 steps (foolbox defaults
    otherwise); the PGD start in ``norm`` covers the whole image box (``init_eps`` None) and
    steps ``init_eps / 2`` when ``init_step_size`` is None."""
    return BrendelBethge(
        eps=eps,
        norm=norm,
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
