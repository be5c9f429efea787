"""Minimum-norm L2 attacks: Carlini & Wagner L2 and DDN.

Both search for the smallest L2 perturbation that changes the prediction, keep the per-example
smallest adversarial found, and share one output convention (also used by FAB-T, ``fab.py``):

* ``success``: an adversarial point was found (misclassified, or classified as the target when
  ``targeted``; re-checked at the returned point) and, when ``eps`` is given, its norm is
  ``<= eps``. Clean points that are already adversarial succeed with a zero perturbation.
* ``x_adv``: the smallest adversarial found when ``success``, else the clean ``x``.
* ``loss``: minus the norm of the smallest adversarial found, ``-inf`` where none was found.
  It is reported regardless of ``eps`` (so ``-loss`` is the minimum-norm estimate even where
  the point lies outside the budget and ``x_adv`` is ``x``); higher is worse for the defender,
  so the combinators' worst case (success first, then a higher loss) prefers smaller norms.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
import optax

from advjax import losses
from advjax.attacks.base import (
    Attack,
    AttackResult,
    ModelFn,
    check_nonnegative,
    is_label_vector,
    validated,
)
from advjax.threats.lp import lp_norm


def check_int(name: str, value: Any, minimum: int) -> None:
    if isinstance(value, bool) or int(value) != value or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value}")


def check_labels(y: Any, x: jax.Array) -> None:
    if not is_label_vector(y) or y.shape[0] != x.shape[0]:
        shape = getattr(y, "shape", None)
        raise ValueError(
            f"minimum-norm attacks take integer labels of shape [{x.shape[0]}], got "
            f"{type(y).__name__} of shape {shape}"
        )


def check_eps(eps: Any) -> None:
    if eps is not None:
        check_nonnegative(eps=eps)


def per_example(v: jax.Array, x: jax.Array) -> jax.Array:
    """Broadcasts ``[B]`` against a batch shaped like ``x``."""
    return v.reshape((-1,) + (1,) * (x.ndim - 1))


def is_adversarial(
    logits: jax.Array, y: jax.Array, targeted: bool, confidence: float = 0.0
) -> jax.Array:
    """Misclassified (or classified as the target ``y``) with a margin of ``confidence``."""
    onehot = jax.nn.one_hot(y, logits.shape[-1], dtype=logits.dtype)
    if targeted:
        return jnp.argmax(logits - confidence * onehot, axis=-1) == y
    return jnp.argmax(logits + confidence * onehot, axis=-1) != y


def finalize(
    model_fn: ModelFn,
    variables: Any,
    x: jax.Array,
    y: jax.Array,
    targeted: bool,
    best_x: jax.Array,
    best_norm: jax.Array,
    clean_adversarial: jax.Array,
    eps: float | None,
) -> AttackResult:
    """The shared output convention (see the module docstring).

    ``best_norm`` is ``inf`` where no adversarial was found; ``clean_adversarial`` marks points
    that are adversarial before the attack (they get ``x`` and norm 0).
    """
    best_norm = jnp.where(clean_adversarial, 0.0, best_norm)
    best_x = jnp.where(per_example(clean_adversarial, x), x, best_x)
    found = jnp.isfinite(best_norm)
    ok = found if eps is None else found & (best_norm <= eps)
    x_adv = jnp.where(per_example(ok, x), best_x, x)
    # Re-check at the returned point so that ``success`` always describes ``x_adv`` itself.
    ok = ok & is_adversarial(model_fn(variables, x_adv), y, targeted)
    x_adv = jnp.where(per_example(ok, x), x_adv, x)
    loss = jnp.where(found, -best_norm, -jnp.inf)
    return AttackResult(x_adv=jax.lax.stop_gradient(x_adv), loss=loss, success=ok)


@dataclasses.dataclass(frozen=True)
class MinimumNormAttack(Attack):
    """Base of the minimum-norm attacks: an optional ``eps`` field bounds ``success`` only, and
    budget scaling multiplies it (without a budget there is nothing to scale)."""

    def scaled(self, factor: Any) -> MinimumNormAttack:
        if self.eps is None:
            return self
        return dataclasses.replace(self, eps=self.eps * factor)


@dataclasses.dataclass(frozen=True)
class CarliniWagnerL2(MinimumNormAttack):
    """Carlini & Wagner (S&P 2017) L2 attack (Sec. VI-A, objective f_6 with confidence kappa).

    Change of variables ``x' = (tanh(w) + 1) / 2`` (so ``x'`` stays in the box), and Adam on
    ``||x' - x||_2^2 + c * max(z_y - max_{j != y} z_j + kappa, 0)`` (untargeted;
    targeted: ``max(max_{j != t} z_j - z_t + kappa, 0)``; the paper's ``max(., -kappa)`` plus the
    constant ``c kappa``, as in its code), starting from ``w = atanh((2x - 1)(1 - 1e-6))``.
    Distances are measured to the clean ``x`` (the reference code uses ``x`` after the tanh
    round trip, which differs by about 1e-6). A binary search over ``c`` per example
    (``binary_search_steps`` runs of ``steps`` Adam steps, each restarted from ``x``): ``c`` is
    multiplied by 10 until an adversarial is found, then bisected. The smallest adversarial over
    all iterates is kept.

    Attributes:
      eps: optional L2 budget: success needs ``||x_adv - x||_2 <= eps``.
      step_size: Adam's learning rate.
      steps: Adam steps per binary-search step (paper code: 10000; default here 1000).
      binary_search_steps: number of values of ``c`` tried; with >= 10 the last step uses the
        upper bound, as in the reference code.
      initial_const: the first ``c`` (1e-3, as in the paper's code and foolbox).
      confidence: ``kappa``; an iterate counts as adversarial only with this logit margin.
      abort_early: stop an example's Adam run (until the next ``c``) when its loss has not
        decreased by 0.01% over the last ``steps // 10`` steps (per example; the reference
        checks the batch total). The loop exits when every example has stopped.
      targeted: ``y`` holds target classes.
    """

    eps: float | None
    step_size: float
    steps: int
    binary_search_steps: int
    initial_const: float
    confidence: float
    abort_early: bool
    targeted: bool

    def __post_init__(self):
        check_int("steps", self.steps, 1)
        check_int("binary_search_steps", self.binary_search_steps, 1)
        check_nonnegative(confidence=self.confidence)
        if not self.initial_const > 0:
            raise ValueError(f"initial_const must be > 0, got {self.initial_const}")
        if not self.step_size > 0:
            raise ValueError(f"step_size must be > 0, got {self.step_size}")
        check_eps(self.eps)

    @validated
    def run(
        self, model_fn: ModelFn, variables: Any, x: jax.Array, y: Any, key: jax.Array
    ) -> AttackResult:
        del key  # deterministic
        check_labels(y, x)
        x = jax.lax.stop_gradient(x)
        clean_logits = model_fn(variables, x)
        onehot = jax.nn.one_hot(y, clean_logits.shape[-1], dtype=bool)
        kappa = self.confidence
        w0 = jnp.arctanh((2.0 * x - 1.0) * (1.0 - 1e-6))
        optimizer = optax.adam(self.step_size)
        check_every = max(1, self.steps // 10)

        def objective(w, const):
            x_adv = (jnp.tanh(w) + 1.0) / 2.0
            logits = model_fn(variables, x_adv)
            real = jnp.sum(jnp.where(onehot, logits, 0.0), axis=-1)
            other = jnp.max(jnp.where(onehot, -jnp.inf, logits), axis=-1)
            margin = other - real if self.targeted else real - other
            sq_dist = jnp.sum((x_adv - x).reshape(x.shape[0], -1) ** 2, axis=1)
            per_ex = sq_dist + const * jnp.maximum(margin + kappa, 0.0)
            return jnp.sum(per_ex), (per_ex, sq_dist, logits, x_adv)

        grad_fn = jax.grad(objective, has_aux=True)

        def adam_run(const, best):
            """One binary-search step: Adam from ``w0``; updates the global best."""

            def cond(state):
                i, _, _, active, *_ = state
                return (i < self.steps) & (jnp.any(active) if self.abort_early else True)

            def body(state):
                i, w, opt_state, active, prev, found, best_x, best_n = state
                grad, (loss, sq_dist, logits, x_adv) = grad_fn(w, const)
                adv = is_adversarial(logits, y, self.targeted, kappa) & active
                dist = jnp.sqrt(sq_dist)
                take = adv & (dist < best_n)
                best_x = jnp.where(per_example(take, x), x_adv, best_x)
                best_n = jnp.where(take, dist, best_n)
                found = found | adv
                if self.abort_early:
                    check = i % check_every == 0
                    active = active & ~(check & (loss > 0.9999 * prev))
                    prev = jnp.where(check, loss, prev)
                updates, opt_state = optimizer.update(grad, opt_state, w)
                w = jnp.where(per_example(active, x), optax.apply_updates(w, updates), w)
                return i + 1, w, opt_state, active, prev, found, best_x, best_n

            no = jnp.zeros(x.shape[0], bool)
            state = (
                jnp.asarray(0),
                w0,
                optimizer.init(w0),
                ~no,
                jnp.full(x.shape[0], jnp.inf),
                no,
                *best,
            )
            _, _, _, _, _, found, best_x, best_n = jax.lax.while_loop(cond, body, state)
            return found, (best_x, best_n)

        def search_step(carry, step):
            const, lower, upper, best = carry
            if self.binary_search_steps >= 10:  # the reference's last step uses the upper bound
                const = jnp.where(step == self.binary_search_steps - 1, upper, const)
            found, best = adam_run(const, best)
            upper = jnp.where(found, jnp.minimum(upper, const), upper)
            lower = jnp.where(found, lower, jnp.maximum(lower, const))
            const = jnp.where(upper < 1e9, (lower + upper) / 2, jnp.where(found, const, const * 10))
            return (const, lower, upper, best), None

        batch = jnp.ones(x.shape[0])
        carry = (
            self.initial_const * batch,
            0.0 * batch,
            1e10 * batch,
            (x, jnp.full(x.shape[0], jnp.inf)),
        )
        (_, _, _, (best_x, best_n)), _ = jax.lax.scan(
            search_step, carry, jnp.arange(self.binary_search_steps)
        )
        clean_adv = is_adversarial(clean_logits, y, self.targeted)
        return finalize(
            model_fn, variables, x, y, self.targeted, best_x, best_n, clean_adv, self.eps
        )


def cw_l2(
    eps: float | None = None,
    step_size: float = 0.01,
    steps: int = 1000,
    *,
    binary_search_steps: int = 9,
    initial_const: float = 1e-3,
    confidence: float = 0.0,
    abort_early: bool = True,
    targeted: bool = False,
) -> CarliniWagnerL2:
    """Carlini & Wagner L2 (S&P 2017): Adam in tanh space, binary search over ``c``.

    Defaults follow the paper's code (9 search steps, ``c0 = 1e-3``, Adam step 0.01,
    ``kappa = 0``, abort early) except ``steps=1000`` per search step instead of 10000.
    """
    return CarliniWagnerL2(
        eps=eps,
        step_size=step_size,
        steps=steps,
        binary_search_steps=binary_search_steps,
        initial_const=initial_const,
        confidence=confidence,
        abort_early=abort_early,
        targeted=targeted,
    )


def _per_example_normal(key: jax.Array, x: jax.Array) -> jax.Array:
    if key.ndim == 1:
        return jax.vmap(lambda k: jax.random.normal(k, x.shape[1:], x.dtype))(key)
    return jax.random.normal(key, x.shape, x.dtype)


def _fold_in(key: jax.Array, i: jax.Array) -> jax.Array:
    if key.ndim == 1:
        return jax.vmap(lambda k: jax.random.fold_in(k, i))(key)
    return jax.random.fold_in(key, i)


@dataclasses.dataclass(frozen=True)
class DDN(MinimumNormAttack):
    """Decoupled Direction and Norm (Rony et al., CVPR 2019, Algorithm 1).

    From ``delta = 0`` and a norm ``eps_0 = init_norm``, each step moves ``delta`` by
    ``alpha_k g / ||g||_2`` (``g`` the gradient of the cross-entropy, descended when targeted),
    multiplies the norm by ``1 - gamma`` if the current point is adversarial and by
    ``1 + gamma`` otherwise (capped by ``||max(x, 1 - x)||_2``), rescales ``delta`` to that
    norm and clips ``x + delta`` to the box (optionally quantised to ``levels`` values). The step
    size is cosine-annealed from ``step_size`` to ``min_step_size`` (as in the authors' code).
    The smallest adversarial iterate is kept. A zero gradient is replaced by Gaussian noise
    (drawn from ``key``; per-example keys give per-example draws).

    Attributes:
      eps: optional L2 budget: success needs ``||x_adv - x||_2 <= eps``.
      step_size, min_step_size: the cosine schedule of ``alpha``.
      steps: number of iterations.
      init_norm: ``eps_0``.
      gamma: the norm's multiplicative update.
      levels: quantise ``x + delta`` to ``levels`` values per step (None: no quantisation).
      targeted: ``y`` holds target classes.
    """

    eps: float | None
    step_size: float
    steps: int
    min_step_size: float
    init_norm: float
    gamma: float
    levels: int | None
    targeted: bool

    def __post_init__(self):
        check_int("steps", self.steps, 1)
        check_nonnegative(
            init_norm=self.init_norm, step_size=self.step_size, min_step_size=self.min_step_size
        )
        if not 0 <= self.gamma < 1:
            raise ValueError(f"gamma must be in [0, 1), got {self.gamma}")
        if self.levels is not None:
            check_int("levels", self.levels, 2)
        check_eps(self.eps)

    @validated
    def run(
        self, model_fn: ModelFn, variables: Any, x: jax.Array, y: Any, key: jax.Array
    ) -> AttackResult:
        check_labels(y, x)
        x = jax.lax.stop_gradient(x)
        sign = 1.0 if self.targeted else -1.0  # minimised objective

        def objective(x_adv):
            logits = model_fn(variables, x_adv)
            return sign * jnp.sum(losses.cross_entropy(logits, y)), logits

        grad_fn = jax.grad(objective, has_aux=True)
        worst_norm = lp_norm(jnp.maximum(x, 1.0 - x), "l2")
        hi, lo = self.step_size, self.min_step_size

        def record(delta, logits, best_x, best_n):
            adv = is_adversarial(logits, y, self.targeted)
            dist = lp_norm(delta, "l2")
            take = adv & (dist < best_n)
            best_x = jnp.where(per_example(take, x), x + delta, best_x)
            return adv, best_x, jnp.where(take, dist, best_n)

        def step(carry, i):
            delta, norm, best_x, best_n = carry
            grad, logits = grad_fn(x + delta)
            adv, best_x, best_n = record(delta, logits, best_x, best_n)
            grad_norm = lp_norm(grad, "l2")
            noise = _per_example_normal(_fold_in(key, i), x)
            grad = jnp.where(per_example(grad_norm == 0, x), noise, grad)
            grad = grad / per_example(jnp.maximum(lp_norm(grad, "l2"), 1e-12), x)
            alpha = lo + (hi - lo) * (1.0 + jnp.cos(math.pi * i / self.steps)) / 2.0
            delta = delta - alpha * grad
            norm = norm * jnp.where(adv, 1.0 - self.gamma, 1.0 + self.gamma)
            norm = jnp.minimum(norm, worst_norm)
            delta = delta * per_example(norm / jnp.maximum(lp_norm(delta, "l2"), 1e-12), x)
            x_new = x + delta
            if self.levels is not None:
                x_new = jnp.round(x_new * (self.levels - 1)) / (self.levels - 1)
            delta = jnp.clip(x_new, 0.0, 1.0) - x
            return (delta, norm, best_x, best_n), None

        first = x[:, 0, 0, 0]
        carry = (
            jnp.zeros_like(x),
            jnp.full_like(first, self.init_norm),
            x,
            jnp.full_like(first, jnp.inf),
        )
        (delta, _, best_x, best_n), _ = jax.lax.scan(step, carry, jnp.arange(self.steps))
        # The references never evaluate the last iterate; one more forward pass does.
        _, best_x, best_n = record(delta, model_fn(variables, x + delta), best_x, best_n)
        clean_adv = is_adversarial(model_fn(variables, x), y, self.targeted)
        return finalize(
            model_fn, variables, x, y, self.targeted, best_x, best_n, clean_adv, self.eps
        )


def ddn(
    eps: float | None = None,
    step_size: float = 1.0,
    steps: int = 100,
    *,
    min_step_size: float = 0.01,
    init_norm: float = 1.0,
    gamma: float = 0.05,
    levels: int | None = None,
    targeted: bool = False,
) -> DDN:
    """DDN (Rony et al. 2019): 100 steps, ``eps_0 = 1``, ``gamma = 0.05``, step 1 -> 0.01."""
    return DDN(
        eps=eps,
        step_size=step_size,
        steps=steps,
        min_step_size=min_step_size,
        init_norm=init_norm,
        gamma=gamma,
        levels=levels,
        targeted=targeted,
    )
