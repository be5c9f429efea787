"""HopSkipJump (Chen, Jordan & Wainwright, IEEE S&P 2020, "HopSkipJumpAttack: A Query-Efficient
Decision-Based Attack", Alg. 1-2): a decision-based minimum-norm attack, L2 or Linf.

Only the top-1 decision ``phi(z) = 1[z is adversarial]`` is read. From an adversarial start
``x_0`` (uniform noise ``u ~ U[0, 1]^D`` until one is adversarial, then a bisection of the blend
``(1 - a) x + a u`` to tolerance 0.001; or a given start), with ``d`` the input dimension and
``theta = gamma / d^{3/2}`` (L2) or ``gamma / d^2`` (Linf)::

    x_0 = bin_search(x_0)                       (to the boundary between x and x_0, tol. theta)
    for t = 0 .. steps - 1:
        dist_t = ||x_t - x||_p
        delta_t = 0.1 if t = 0 else sqrt(d) theta dist_t (L2), d theta dist_t (Linf)
        n_t = min(init_num_evals sqrt(t + 1), max_num_evals)
        g = mean_i (phi(x_t + delta_t u_i) - mean phi) u_i,  u_i uniform on the sphere (L2) or
            normalised U[-1, 1]^D (Linf), clipped to the box   (Eq. 9-10 with the baseline)
        v = g / ||g||_2 (L2), sign(g) (Linf)
        xi = dist_t / sqrt(t + 1), halved until clip(x_t + xi v, 0, 1) is adversarial
        x_{t+1} = bin_search(clip(x_t + xi v, 0, 1))

The L2 binary search bisects the blend ``(1 - a) x + a z``, ``a in [0, 1]``; the Linf one the
projection ``clip(z, x - a, x + a)``, ``a in [0, ||z - x||_inf]`` (the paper's Linf projection,
Sec. 3.4), each for ``ceil(log2(1 / theta))`` halvings (the tolerance ``theta``, relative to the
interval for Linf). Every iterate after a binary search is adversarial; the smallest one is kept.

Output convention: that of the other minimum-norm attacks (``advjax.attacks.minimum_norm``):
``success`` when the smallest adversarial found has ``||x_adv - x||_p <= eps`` (any size when
``eps`` is None), ``loss`` minus its norm (``-inf`` where no start was found: those points are not
attacked).

Fixed shapes: the batch moves in lockstep through the steps, so ``n_t`` is the same for every
example; it is evaluated ``eval_batch`` directions at a time (one model call on
``B x eval_batch`` points), the last batch masked. Each example halves its own step size
(masked once adversarial, at most ``max_halvings`` times) and draws its own directions from its
own key (the Square attack's counter-based hash streams, 23 bits per value: the Gaussian
directions are ``erf_inv`` of them, cut at 3.7 standard deviations; per-example keys make an
example's run independent of its batch).

Defaults follow the paper and foolbox 3's ``HopSkipJumpAttack``: ``gamma = 1``, 100 initial and
at most 10,000 evaluations per estimate, geometric step-size search; ``steps = 64`` (foolbox; ART
50, the authors' ``hsja.py`` 40). As in foolbox, ``delta_t`` comes from the distance after the
last binary search (the authors' code uses the distance before it). Differences from foolbox:
every norm is per example, as in the paper (foolbox 3.3.4 normalises the directions ``u_i`` and
the estimate ``g`` by norms over the whole batch, which shortens its probes and its L2 steps by
about ``sqrt(B)``: ``results/spsa_hsj_parity.md``); the start is the authors' uniform-noise
search (foolbox: a blended-uniform-noise linear search;
ART: the same noise search with 100 draws, ``init_trials``); the binary searches run a fixed
number of halvings (the authors' stopping rule, for distances <= 1); the step-size search stops
after ``max_halvings`` halvings (foolbox loops until adversarial) and then keeps ``x_t``; the
smallest adversarial iterate is returned (foolbox and ART return the last one, the smallest up to
the estimate's noise).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from advjax.attacks.base import AttackResult, ModelFn, QueryAttack, validated
from advjax.attacks.minimum_norm import (
    MinimumNormAttack,
    check_eps,
    check_int,
    check_labels,
    finalize,
    is_adversarial,
    per_example,
)
from advjax.attacks.random_bits import INIT_SALT, restart_seed, step_bits
from advjax.threats.lp import bisect, lp_norm

HSJ_NORMS = ("l2", "linf")
_BLEND_HALVINGS = 10  # the start's blend search: tolerance 2**-10 < 0.001 (the authors')


def eval_schedule(steps: int, init_num_evals: int, max_num_evals: int) -> np.ndarray:
    """``n_t = min(int(init_num_evals sqrt(t + 1)), max_num_evals)`` for ``t = 0 .. steps - 1``."""
    t = np.arange(int(steps), dtype=np.float64)
    return np.minimum((init_num_evals * np.sqrt(t + 1)).astype(np.int64), max_num_evals)


def binary_search_halvings(norm: str, dim: int, gamma: float) -> int:
    """Halvings of the binary search to tolerance ``theta = gamma / d^{3/2}`` (L2) or
    ``gamma / d^2`` (Linf, relative to the interval)."""
    theta = gamma / dim**1.5 if norm == "l2" else gamma / dim**2
    return max(1, math.ceil(math.log2(1.0 / theta)))


def _unit_words(words: jax.Array, dtype) -> jax.Array:
    """Uniform values in ``(0, 1)`` from random uint32 words (23 bits each: ``1 - 2^-24`` is the
    largest float32 below 1, so both ends stay open and ``erf_inv(2u - 1)`` finite)."""
    return ((words >> 9).astype(dtype) + 0.5) * 2.0**-23


def _stream(seeds: jax.Array, counter: jax.Array, shape: tuple[int, ...], dtype) -> jax.Array:
    """Per-example uniform ``(0, 1)`` values ``[B, *shape]`` of stream ``counter``."""
    size = math.prod(shape)
    counter = jnp.asarray(counter).astype(jnp.uint32)
    words = jax.vmap(lambda s: step_bits(restart_seed(s, counter), 0, size))(seeds)
    return _unit_words(words, dtype).reshape(seeds.shape[0], *shape)


@dataclasses.dataclass(frozen=True)
class HopSkipJump(MinimumNormAttack, QueryAttack):
    """HopSkipJump, L2 or Linf (see the module docstring).

    Attributes:
      eps: optional budget of ``success`` in the attack's norm.
      steps: iterations (gradient estimate, step-size search, binary search).
      norm: "l2" or "linf".
      init_num_evals, max_num_evals: the estimate at step ``t`` uses
        ``min(init_num_evals sqrt(t + 1), max_num_evals)`` decisions.
      eval_batch: directions evaluated per model call (memory: ``B x eval_batch`` points).
      gamma: the binary-search tolerance ``theta = gamma / d^{3/2}`` (L2), ``gamma / d^2``
        (Linf); it also sets the probe size ``delta_t``.
      init_trials: uniform-noise draws per example to find an adversarial start.
      max_halvings: most halvings of the geometric step-size search.
      targeted: ``y`` holds target classes (the noise search then looks for them).
    """

    eps: float | None
    steps: int
    norm: str
    init_num_evals: int
    max_num_evals: int
    eval_batch: int
    gamma: float
    init_trials: int
    max_halvings: int
    targeted: bool

    def __post_init__(self):
        check_int("steps", self.steps, 0)
        check_int("init_num_evals", self.init_num_evals, 1)
        check_int("max_num_evals", self.max_num_evals, self.init_num_evals)
        check_int("eval_batch", self.eval_batch, 1)
        check_int("init_trials", self.init_trials, 1)
        check_int("max_halvings", self.max_halvings, 0)
        if self.norm not in HSJ_NORMS:
            raise ValueError(
                f"unknown norm {self.norm!r} for HopSkipJump; valid norms: {', '.join(HSJ_NORMS)}"
            )
        if not self.gamma > 0:
            raise ValueError(f"gamma must be > 0, got {self.gamma}")
        check_eps(self.eps)

    @validated
    def run_with_queries(
        self, model_fn: ModelFn, variables: Any, x: jax.Array, y: Any, key: jax.Array
    ) -> tuple[AttackResult, jax.Array]:
        """``run`` plus the per-example number of model queries (int32 ``[B]``)."""
        return self._attack(model_fn, variables, x, y, key, None)

    @validated
    def run_from(
        self,
        model_fn: ModelFn,
        variables: Any,
        x: jax.Array,
        y: Any,
        key: jax.Array,
        x_start: jax.Array,
    ) -> tuple[AttackResult, jax.Array]:
        """``run_with_queries`` from given starting points ``x_start`` (foolbox's
        ``starting_points``, ART's ``x_adv_init``); where a start is not adversarial, the
        uniform-noise search finds one."""
        if x_start.shape != x.shape:
            raise ValueError(f"x_start must have the shape of x {x.shape}, got {x_start.shape}")
        return self._attack(model_fn, variables, x, y, key, x_start)

    def _attack(self, model_fn, variables, x, y, key, x_start):
        check_labels(y, x)
        batch = x.shape[0]
        shape = x.shape[1:]
        dim = math.prod(shape)
        x = jax.lax.stop_gradient(x)
        if key.ndim == 0:
            seeds = jax.random.bits(key, (batch, 2))
        else:
            seeds = jax.vmap(lambda k: jax.random.bits(k, (2,)))(key)
        init_seeds = seeds ^ jnp.asarray(INIT_SALT, jnp.uint32)
        linf = self.norm == "linf"
        theta = self.gamma / dim**2 if linf else self.gamma / dim**1.5
        halvings = binary_search_halvings(self.norm, dim, self.gamma)
        schedule = eval_schedule(self.steps, self.init_num_evals, self.max_num_evals)
        max_chunks = -(-self.max_num_evals // self.eval_batch)  # streams per step

        def decide(z):
            """Adversarial decisions of a batch ``[B, ...]`` or a stack ``[S, B, ...]``."""
            if z.ndim == x.ndim:
                return is_adversarial(model_fn(variables, z), y, self.targeted)
            logits = model_fn(variables, z.reshape(-1, *shape))
            adv = is_adversarial(logits, jnp.tile(y, z.shape[0]), self.targeted)
            return adv.reshape(z.shape[:2])

        def count(mask):
            return mask.astype(jnp.int32)

        clean_adv = decide(x)
        queries = jnp.ones(batch, jnp.int32)

        # The start: the given point where it is adversarial, else uniform noise (Sec. 3.4).
        if x_start is None:
            found, start = jnp.zeros(batch, bool), x
        else:
            x_start = jax.lax.stop_gradient(x_start).astype(x.dtype)
            found = decide(x_start)
            queries = queries + 1
            start = jnp.where(per_example(found, x), x_start, x)
        given = found | clean_adv

        def noise_cond(state):
            i, found, _, _ = state
            return (i < self.init_trials) & jnp.any(~found)

        def noise_body(state):
            i, found, start, queries = state
            noise = _stream(init_seeds, i, shape, x.dtype)
            adv = decide(noise)
            take = ~found & adv
            queries = queries + count(~found)
            start = jnp.where(per_example(take, x), noise, start)
            return i + 1, found | adv, start, queries

        _, found, start, queries = jax.lax.while_loop(
            noise_cond, noise_body, (jnp.asarray(0), given, start, queries)
        )
        from_noise = found & ~given

        # Bisect the blend of the noise with x (tolerance 0.001), where the start is noise.
        def blend(a):
            return per_example(1.0 - a, x) * x + per_example(a, x) * start

        ones = jnp.ones(batch, x.dtype)
        _, a = bisect(lambda a: decide(blend(a)) & from_noise, 0.0 * ones, ones, _BLEND_HALVINGS)
        queries = queries + _BLEND_HALVINGS * count(from_noise)
        active = found & ~clean_adv
        x_cur = jnp.where(per_example(active, x), blend(a), x)

        def distance(z):
            return lp_norm(z - x, self.norm)

        def to_boundary(z, queries):
            """The binary search between ``x`` (clean) and the adversarial ``z``."""
            if linf:
                top = distance(z)

                def project(a):
                    r = per_example(a, x)
                    return jnp.clip(z, x - r, x + r)
            else:
                top = ones

                def project(a):
                    return per_example(1.0 - a, x) * x + per_example(a, x) * z

            _, a = bisect(lambda a: decide(project(a)) & active, 0.0 * top, top, halvings)
            return project(a), queries + halvings * count(active)

        x_cur, queries = to_boundary(x_cur, queries)
        dist = jnp.where(active, distance(x_cur), jnp.inf)
        sqrt_d = math.sqrt(dim)
        evals_table = jnp.asarray(schedule, jnp.int32)

        def estimate(x_cur, delta, n_evals, t):
            """The boundary's normal at ``x_cur`` from ``n_evals`` decisions (Eq. 9-10)."""
            probe = per_example(jnp.maximum(delta, 1e-12), x)

            def chunk(c, sums):
                u = _stream(seeds, t * max_chunks + c, (self.eval_batch, *shape), x.dtype)
                u = jnp.moveaxis(u, 1, 0)  # [E, B, ...]
                if linf:
                    rv = 2.0 * u - 1.0
                else:
                    rv = jnp.sqrt(2.0) * jax.lax.erf_inv(2.0 * u - 1.0)
                norms = jnp.sqrt(jnp.sum(rv.reshape(*rv.shape[:2], -1) ** 2, axis=-1))
                rv = rv / norms.reshape(*norms.shape, *(1,) * len(shape))
                perturbed = jnp.clip(x_cur + probe * rv, 0.0, 1.0)
                rv = (perturbed - x_cur) / probe
                valid = c * self.eval_batch + jnp.arange(self.eval_batch) < n_evals  # [E]
                f = jnp.where(decide(perturbed), 1.0, -1.0) * valid[:, None]  # [E, B]
                f_rv, s_rv, s_f = sums
                f_rv = f_rv + jnp.einsum("eb,eb...->b...", f, rv)
                s_rv = s_rv + jnp.einsum("e,eb...->b...", valid.astype(x.dtype), rv)
                return f_rv, s_rv, s_f + jnp.sum(f, axis=0)

            num_chunks = (n_evals + self.eval_batch - 1) // self.eval_batch
            zeros = jnp.zeros_like(x)
            f_rv, s_rv, s_f = jax.lax.fori_loop(
                0, num_chunks, chunk, (zeros, zeros, jnp.zeros(batch, x.dtype))
            )
            n = n_evals.astype(x.dtype)
            mean_f = s_f / n
            # Baseline: subtract the mean decision, unless every decision agreed.
            baseline = jnp.where(jnp.abs(mean_f) == 1.0, 0.0, mean_f)
            grad = (f_rv - per_example(baseline, x) * s_rv) / n
            return grad / per_example(lp_norm(grad, "l2") + 1e-12, x)

        def step(carry, t):
            x_cur, dist, best_x, best_n, queries = carry
            d = jnp.where(active, dist, 0.0)
            scale = dim * theta if linf else sqrt_d * theta
            delta = jnp.where(t == 0, 0.1, scale * d)
            n_evals = evals_table[t]
            grad = estimate(x_cur, delta, n_evals, t)
            queries = queries + n_evals * count(active)
            update = jnp.sign(grad) if linf else grad

            # Geometric step-size search: halve until adversarial.
            def propose(xi):
                return jnp.clip(x_cur + per_example(xi, x) * update, 0.0, 1.0)

            def geo_cond(state):
                k, _, ok, _ = state
                return (k <= self.max_halvings) & jnp.any(~ok)

            def geo_body(state):
                k, xi, ok, queries = state
                adv = decide(propose(xi))
                queries = queries + count(~ok)
                ok = ok | adv
                return k + 1, jnp.where(ok, xi, xi / 2.0), ok, queries

            xi0 = d / jnp.sqrt(t + 1.0).astype(x.dtype)
            _, xi, ok, queries = jax.lax.while_loop(
                geo_cond, geo_body, (jnp.asarray(0), xi0, ~active, queries)
            )
            moved = active & ok
            x_new = jnp.where(per_example(moved, x), propose(xi), x_cur)
            x_new, queries = to_boundary(x_new, queries)
            x_cur = jnp.where(per_example(active, x), x_new, x_cur)
            dist = jnp.where(active, distance(x_cur), jnp.inf)
            take = active & (dist < best_n)
            best_x = jnp.where(per_example(take, x), x_cur, best_x)
            best_n = jnp.where(take, dist, best_n)
            return (x_cur, dist, best_x, best_n, queries), None

        best_x, best_n = x_cur, dist
        if self.steps:
            carry = (x_cur, dist, best_x, best_n, queries)
            steps = jnp.arange(int(self.steps), dtype=jnp.int32)
            (_, _, best_x, best_n, queries), _ = jax.lax.scan(step, carry, steps)
        result = finalize(
            model_fn, variables, x, y, self.targeted, best_x, best_n, clean_adv, self.eps
        )
        return result, queries


def hop_skip_jump(
    eps: float | None = None,
    steps: int = 64,
    *,
    norm: str = "l2",
    init_num_evals: int = 100,
    max_num_evals: int = 10000,
    eval_batch: int = 100,
    gamma: float = 1.0,
    init_trials: int = 100,
    max_halvings: int = 30,
    targeted: bool = False,
) -> HopSkipJump:
    """HopSkipJump (Chen et al. 2020), decision-based, L2 or Linf: foolbox's defaults (64
    steps, 100 to 10,000 decisions per estimate, ``gamma = 1``), uniform-noise start (100 draws).

    ``attack.run_with_queries(...)`` also returns the per-example number of queries;
    ``attack.run_from(..., x_start)`` starts from given adversarial points.
    """
    return HopSkipJump(
        eps=eps,
        steps=steps,
        norm=norm,
        init_num_evals=init_num_evals,
        max_num_evals=max_num_evals,
        eval_batch=eval_batch,
        gamma=gamma,
        init_trials=init_trials,
        max_halvings=max_halvings,
        targeted=targeted,
    )
