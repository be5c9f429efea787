"""First-order attacks: one projected steepest-ascent loop, several named presets.

The loop (Madry et al. 2018, eq. 2.1; with momentum, Dong et al. 2018)::

    x_0 = init(x)  (random point of the ball, or x itself)
    g_t = mu * g_{t-1} + grad_t / ||grad_t||_1   (mu = 0: plain gradient)
    x_{t+1} = Proj_{B(x, eps) ∩ [0,1]}(x_t + alpha * direction(g_t))

with ``grad_t`` the gradient of ``±loss(model(x_t), y)`` (minus when targeted). With
``keep_best`` the per-example best iterate (success first, then loss) is returned.

The factories take ``domain`` (``advjax.validation.Domain``): ``"image"`` (the default, NHWC in
[0, 1]) or, for inputs that are not images, ``"features"`` (any ``[batch, ...]``, no box: the
projection is onto the ball alone) or ``Domain("features", (lo, hi))``; the box ``[0, 1]`` above
is then the domain's.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from advjax import losses
from advjax.attacks.base import (
    Attack,
    AttackResult,
    ModelFn,
    better,
    check_nonnegative,
    success,
    validated,
)
from advjax.threats import LpBall
from advjax.threats.lp import clip_box, is_concrete, scaled
from advjax.validation import IMAGES, Domain, as_domain


def _per_example(v: jax.Array, x: jax.Array) -> jax.Array:
    """A per-example vector ``[B]`` broadcast against a batch shaped like ``x`` (any rank)."""
    return v.reshape((-1,) + (1,) * (x.ndim - 1))


def _first_entry(x: jax.Array) -> jax.Array:
    """``x[:, 0, ..., 0]``: a ``[B]`` vector with ``x``'s sharding type (any rank)."""
    return x[(slice(None),) + (0,) * (x.ndim - 1)]


@dataclasses.dataclass(frozen=True)
class GradientAttack(Attack):
    """Projected steepest ascent on a per-example loss (PGD, FGSM, BIM, MI-FGSM, ...).

    Built by the factories below (``pgd``, ``fgsm``, ...), which hold the defaults.

    Attributes:
      threat: the perturbation set (``LpBall``).
      step_size: ``alpha``, in units of the threat model's norm.
      steps: number of ascent steps.
      loss: a name from ``advjax.losses.LOSSES`` or a callable ``(logits, y) -> [B]``.
      targeted: minimise the loss towards ``y`` (the targets) instead of maximising it.
      random_init: start from a random point of the ball instead of ``x``.
      momentum: ``mu`` of MI-FGSM (0 disables momentum).
      keep_best: return the best iterate per example instead of the last one.
      unroll: ``lax.scan`` unroll factor of the step loop (``True`` unrolls fully).
      domain: the inputs' ``Domain`` (checks and box); the threat's ``bounds`` must equal its.
    """

    threat: LpBall
    step_size: float
    steps: int
    loss: Any
    targeted: bool
    random_init: bool
    momentum: float
    keep_best: bool
    unroll: int | bool
    domain: Domain = IMAGES

    def __post_init__(self):
        check_nonnegative(step_size=self.step_size, steps=self.steps, momentum=self.momentum)
        if isinstance(self.steps, bool) or int(self.steps) != self.steps or self.steps < 1:
            raise ValueError(f"steps must be an integer >= 1, got {self.steps}")
        losses.get_loss(self.loss)
        object.__setattr__(self, "domain", as_domain(self.domain))
        box = getattr(self.threat, "bounds", self.domain.bounds)
        if box != self.domain.bounds:
            raise ValueError(
                f"the threat's box {box} differs from the domain's bounds {self.domain.bounds}; "
                "build the attack with the factory's domain=... (which sets both)"
            )

    def scaled(self, factor: Any) -> GradientAttack:
        return dataclasses.replace(
            self, threat=scaled(self.threat, factor), step_size=self.step_size * factor
        )

    def _objective(self, model_fn: ModelFn, variables: Any, y: Any):
        loss_fn = losses.get_loss(self.loss)
        sign = -1.0 if self.targeted else 1.0

        def objective(x_adv):
            logits = model_fn(variables, x_adv)
            per_example = sign * loss_fn(logits, y)
            return jnp.sum(per_example), (per_example, logits)

        return objective

    @validated
    def run(
        self, model_fn: ModelFn, variables: Any, x: jax.Array, y: Any, key: jax.Array
    ) -> AttackResult:
        objective = self._objective(model_fn, variables, y)
        grad_fn = jax.grad(objective, has_aux=True)
        x = jax.lax.stop_gradient(x)
        x0 = self.threat.init(key, x) if self.random_init else x
        # full_like keeps x's sharding type, so the carry also typechecks inside shard_map.
        first_pixel = _first_entry(x)
        best = (x0, jnp.full_like(first_pixel, -jnp.inf), jnp.full_like(first_pixel, False, bool))

        def step(carry, _):
            x_adv, velocity, best = carry
            grad, (score, logits) = grad_fn(x_adv)
            if self.keep_best:
                ok = success(logits, y, self.targeted)
                take = better(ok, score, best[2], best[1])
                best = (
                    jnp.where(_per_example(take, x), x_adv, best[0]),
                    jnp.where(take, score, best[1]),
                    jnp.where(take, ok, best[2]),
                )
            if self.momentum:
                l1 = jnp.sum(jnp.abs(grad), axis=tuple(range(1, grad.ndim)), keepdims=True)
                velocity = self.momentum * velocity + grad / jnp.maximum(l1, 1e-12)
                grad = velocity
            x_next = x_adv + self.step_size * self.threat.direction(grad, x_adv)
            return (self.threat.project(x_next, x), velocity, best), None

        unroll = self.unroll if self.unroll is not True else max(1, int(self.steps))
        (x_last, _, best), _ = jax.lax.scan(
            step, (x0, jnp.zeros_like(x), best), None, length=int(self.steps), unroll=unroll
        )
        score, logits = objective(x_last)[1]
        ok = success(logits, y, self.targeted)
        if self.keep_best:
            take = better(ok, score, best[2], best[1])
            x_last = jnp.where(_per_example(take, x), x_last, best[0])
            score = jnp.where(take, score, best[1])
            ok = jnp.where(take, ok, best[2])
        return AttackResult(x_adv=jax.lax.stop_gradient(x_last), loss=score, success=ok)


# PGD with at most this many steps unrolls fully (the fastest code); longer runs stay a lax.scan
# (PGD-1000 unrolled takes minutes and gigabytes to compile).
UNROLL_MAX_STEPS = 100


def madry_step_size(eps: Any, steps: int) -> Any:
    """Madry et al.'s rule ``2.5 eps / steps``: the default step of the PGD-family factories."""
    return 2.5 * eps / max(int(steps), 1)


def pgd(
    eps: float,
    step_size: float | None,
    steps: int,
    *,
    norm: str = "linf",
    loss: Any = "ce",
    targeted: bool = False,
    random_init: bool = True,
    keep_best: bool = True,
    l1_sparsity: float = 0.01,
    unroll: int | bool | None = None,
    domain: Any = "image",
) -> GradientAttack:
    """Projected gradient descent (Madry et al. 2018) in an Linf, L2 or L1 ball.

    ``step_size=None`` is ``2.5 eps / steps`` (``madry_step_size``). ``unroll=None`` unrolls the
    step loop fully up to ``UNROLL_MAX_STEPS`` steps and keeps a ``lax.scan`` beyond.
    ``domain``: ``"image"`` (NHWC in [0, 1]), ``"features"`` (any ``[batch, ...]``, no box) or an
    ``advjax.validation.Domain`` (``as_domain``).
    """
    if unroll is None:
        unroll = int(steps) <= UNROLL_MAX_STEPS
    domain = as_domain(domain)
    return GradientAttack(
        threat=LpBall(norm, eps, l1_sparsity, domain.bounds),
        step_size=madry_step_size(eps, steps) if step_size is None else step_size,
        steps=steps,
        loss=loss,
        targeted=targeted,
        random_init=random_init,
        momentum=0.0,
        keep_best=keep_best,
        unroll=unroll,
        domain=domain,
    )


def fgsm(
    eps: float,
    *,
    norm: str = "linf",
    loss: Any = "ce",
    targeted: bool = False,
    domain: Any = "image",
) -> GradientAttack:
    """Fast gradient sign method (Goodfellow et al. 2015): ``x + eps * sign(grad)``."""
    return _one_step(eps, eps, norm, loss, targeted, random_init=False, domain=domain)


def fgsm_rs(
    eps: float,
    step_size: float | None = None,
    *,
    norm: str = "linf",
    loss: Any = "ce",
    targeted: bool = False,
    domain: Any = "image",
) -> GradientAttack:
    """FGSM from a uniform random start, step ``1.25 eps`` by default (Wong et al. 2020, Alg. 3)."""
    step = 1.25 * eps if step_size is None else step_size
    return _one_step(eps, step, norm, loss, targeted, random_init=True, domain=domain)


def _one_step(
    eps: Any,
    step_size: Any,
    norm: str,
    loss: Any,
    targeted: bool,
    random_init: bool,
    domain: Any = IMAGES,
) -> GradientAttack:
    """One gradient step, last iterate (the FGSM family)."""
    domain = as_domain(domain)
    return GradientAttack(
        threat=LpBall(norm, eps, bounds=domain.bounds),
        step_size=step_size,
        steps=1,
        loss=loss,
        targeted=targeted,
        random_init=random_init,
        momentum=0.0,
        keep_best=False,
        unroll=True,
        domain=domain,
    )


@dataclasses.dataclass(frozen=True)
class RandFGSM(Attack):
    """R+FGSM (Tramèr et al. 2018): ``x' = x + alpha sign(N(0, I))``, then an
    ``(eps - alpha)`` sign step from ``x'``, projected onto the Linf ball and box.

    Attributes:
      eps: Linf radius.
      step_size: the paper's ``alpha``, the random sign step (the gradient step is
        ``eps - step_size``).
      loss: a name from ``advjax.losses.LOSSES`` or a callable.
      targeted: descend the loss towards ``y`` (the targets).
      domain: the inputs' ``Domain`` (checks and box).
    """

    eps: float
    step_size: float
    loss: Any
    targeted: bool
    domain: Domain = IMAGES

    def __post_init__(self):
        object.__setattr__(self, "domain", as_domain(self.domain))
        check_nonnegative(eps=self.eps, step_size=self.step_size)
        if is_concrete(self.step_size) and is_concrete(self.eps) and self.step_size > self.eps:
            raise ValueError(f"step_size ({self.step_size}) must not exceed eps ({self.eps})")

    def scaled(self, factor: Any) -> RandFGSM:
        return dataclasses.replace(self, eps=self.eps * factor, step_size=self.step_size * factor)

    @validated
    def run(self, model_fn, variables, x, y, key) -> AttackResult:
        if key.ndim == 1:
            noise = jax.vmap(lambda k: jax.random.normal(k, x.shape[1:]))(key)
        else:
            noise = jax.random.normal(key, x.shape)
        x_start = clip_box(x + self.step_size * jnp.sign(noise), self.domain.bounds)
        step = _one_step(
            self.eps,
            self.eps - self.step_size,
            "linf",
            self.loss,
            self.targeted,
            False,
            self.domain,
        )
        # One step from x_start, projected around the clean x.
        grad_fn = jax.grad(step._objective(model_fn, variables, y), has_aux=True)
        grad, _ = grad_fn(x_start)
        x_adv = step.threat.project(x_start + step.step_size * jnp.sign(grad), x)
        score, logits = step._objective(model_fn, variables, y)(x_adv)[1]
        return AttackResult(
            x_adv=jax.lax.stop_gradient(x_adv),
            loss=score,
            success=success(logits, y, self.targeted),
        )


def rfgsm(
    eps: float,
    step_size: float | None = None,
    *,
    loss: Any = "ce",
    targeted: bool = False,
    domain: Any = "image",
) -> RandFGSM:
    """R+FGSM with the random step ``step_size = eps / 2`` by default (Tramèr et al. 2018)."""
    return RandFGSM(
        eps=eps,
        step_size=eps / 2 if step_size is None else step_size,
        loss=loss,
        targeted=targeted,
        domain=as_domain(domain),
    )


def bim(
    eps: float,
    step_size: float,
    steps: int,
    *,
    norm: str = "linf",
    loss: Any = "ce",
    targeted: bool = False,
    domain: Any = "image",
) -> GradientAttack:
    """Basic iterative method (Kurakin et al. 2017): PGD without random start, last iterate."""
    domain = as_domain(domain)
    return GradientAttack(
        threat=LpBall(norm, eps, bounds=domain.bounds),
        step_size=step_size,
        steps=steps,
        loss=loss,
        targeted=targeted,
        random_init=False,
        momentum=0.0,
        keep_best=False,
        unroll=True,
        domain=domain,
    )


def mifgsm(
    eps: float,
    step_size: float | None = None,
    steps: int = 10,
    *,
    decay: float = 1.0,
    norm: str = "linf",
    loss: Any = "ce",
    targeted: bool = False,
    domain: Any = "image",
) -> GradientAttack:
    """Momentum iterative FGSM (Dong et al. 2018): step ``eps / steps``, decay ``mu = 1``."""
    step = eps / max(steps, 1) if step_size is None else step_size
    domain = as_domain(domain)
    return GradientAttack(
        threat=LpBall(norm, eps, bounds=domain.bounds),
        step_size=step,
        steps=steps,
        loss=loss,
        targeted=targeted,
        random_init=False,
        momentum=decay,
        keep_best=False,
        unroll=True,
        domain=domain,
    )
