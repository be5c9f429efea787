"""WRM, the Wasserstein robust method (Sinha et al. 2018; thesis Eq. 2.41, spec ``thesis_ch2_3.md``
Sec. 7 and ``thesis_ch5_6.md`` Eq. 9, Tables 8/9, P22).

The Lagrangian relaxation of distributional robustness with a fixed multiplier ``gamma``: per
example, gradient ascent on the penalised loss (no epsilon ball)::

    phi(x') = loss(f(x'), y) - gamma * c(x', x),      c(x', x) = ||x' - x||_2^2

whose interior maximiser satisfies ``grad loss(x') = 2 gamma (x' - x)``. The steps are those of
Sinha et al.'s ``attacks_tf.py`` (``wrm``, with its ``eps = 0.5 / gamma``, the value the thesis
reports as "eps"), written as one rule from ``x_0 = x``::

    x_{t+1} = clip(x_t + a_t * (eps * grad loss(x_t) - (x_t - x)), 0, 1),   eps = 0.5 / gamma
            = clip(x_t + a_t / (2 gamma) * grad phi(x_t), 0, 1),   a_t = step_size / sqrt(t + 1)

for ``t = 0, ..., steps - 1``. The reference code's first step ``x + eps * grad`` (from ``x``) is
the ``t = 0`` step of this rule, and its loop of ``steps=15`` with rates ``1 / sqrt(t + 2)`` is
``t = 1..15``: its 16 updates are ``steps=16`` here (the default). The reference code does not clip
to [0, 1]; ``clip=False`` reproduces it exactly. The last iterate is returned. ``gamma`` may be a
traced scalar (``with_gamma``); the WRM defense is ``defenses.pgd_at(wrm(...))`` (robust-only CE,
``clean_weight=0``, as the reference training with ``p = 1``).

The spec names ``attacks_tf.py`` but not its constants; the cost's constant, the step count and
the rate schedule above are read from the reference repository
(github.com/duchi-lab/certifiable-distributional-robustness: ``attacks_tf.py``, and
``train_mnist_models.py`` for ``eps = 1.3``, ``steps=15``, robust-only loss, Adam, label
smoothing 0.1 on MNIST).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from advjax import losses
from advjax.attacks.base import Attack, AttackResult, ModelFn, success, validated
from advjax.attacks.gradient import UNROLL_MAX_STEPS

SCHEDULES = ("inv_sqrt", "constant")


def _check_positive(name: str, value: Any, what: str = "", allow_zero: bool = False) -> None:
    """``value > 0`` (``>= 0`` with ``allow_zero``); traced values are not checked."""
    if isinstance(value, jax.core.Tracer):
        return
    try:
        ok = bool(value >= 0) if allow_zero else bool(value > 0)
    except TypeError:
        ok = False
    if not ok:
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name} must be {bound}{f' ({what})' if what else ''}, got {value!r}")


def transport_cost(x_adv: jax.Array, x: jax.Array) -> jax.Array:
    """WRM's cost ``c(x', x) = ||x' - x||_2^2`` per example ``[B]`` (no 1/2: the constant that
    makes ``eps = 0.5 / gamma`` of ``attacks_tf.py`` the step weight of the loss)."""
    delta = (x_adv - x).reshape(x.shape[0], -1)
    return jnp.sum(delta * delta, axis=1)


def gamma_from_eps(eps: float) -> float:
    """``gamma = 0.5 / eps``: the multiplier of the reference code's (and the thesis's) ``eps``."""
    if not eps > 0:
        raise ValueError(f"WRM's eps = 0.5 / gamma must be > 0, got {eps}")
    return 0.5 / eps


@dataclasses.dataclass(frozen=True)
class WRM(Attack):
    """The WRM adversary (Eq. 2.41 with ``c = ||.||_2^2``); built by ``wrm``, which holds the
    defaults.

    ``run(...).loss`` is the loss at ``x_adv`` (without the ``-gamma c`` term, as UDR's attack);
    ``penalized_objective`` gives ``phi``.

    Attributes:
      gamma: the Lagrange multiplier ``gamma > 0`` (a float or a traced scalar).
      steps: ascent updates (the reference code's ``steps=15`` loop plus its first step is 16).
      step_size: the multiplier of the rate schedule ``a_t``.
      schedule: ``"inv_sqrt"`` (``a_t = step_size / sqrt(t + 1)``, the reference code) or
        ``"constant"`` (``a_t = step_size``).
      loss: a name from ``advjax.losses.LOSSES`` or a callable ``(logits, y) -> [B]``.
      targeted: descend the loss towards ``y`` (the targets).
      clip: project every iterate onto the [0, 1] box (the reference code does not).
      scale: the budget factor of ``scaled`` (``eps = scale * 0.5 / gamma``; 0 returns ``x``).
      unroll: ``lax.scan`` unroll factor of the step loop (``True`` unrolls fully).
    """

    gamma: Any
    steps: int
    step_size: Any
    schedule: str
    loss: Any
    targeted: bool
    clip: bool
    scale: Any
    unroll: int | bool

    def __post_init__(self):
        _check_positive(
            "gamma",
            self.gamma,
            "the multiplier of the transport cost; the reference code's eps is 0.5 / gamma",
        )
        if isinstance(self.steps, bool) or int(self.steps) != self.steps or self.steps < 1:
            raise ValueError(f"steps must be an integer >= 1, got {self.steps}")
        _check_positive("step_size", self.step_size)
        _check_positive("scale", self.scale, allow_zero=True)
        if self.schedule not in SCHEDULES:
            raise ValueError(
                f"unknown schedule {self.schedule!r}; valid values: {', '.join(SCHEDULES)}"
            )
        losses.get_loss(self.loss)

    @property
    def eps(self) -> Any:
        """The reference code's ``eps = 0.5 / gamma`` (times ``scale``): the loss's step weight."""
        return self.scale * 0.5 / self.gamma

    def with_gamma(self, gamma: Any) -> WRM:
        """The attack with multiplier ``gamma`` (a float or a traced scalar)."""
        return dataclasses.replace(self, gamma=gamma)

    def scaled(self, factor: Any) -> WRM:
        """Budget times ``factor``: ``eps = 0.5 / gamma`` times ``factor`` (``gamma / factor``),
        for an epsilon warm-up; ``factor = 0`` returns ``x``."""
        return dataclasses.replace(self, scale=self.scale * factor)

    def rates(self) -> jax.Array:
        """The rates ``a_t``, ``t = 0..steps-1``."""
        t = jnp.arange(int(self.steps), dtype=jnp.float32)
        if self.schedule == "inv_sqrt":
            return self.step_size / jnp.sqrt(t + 1.0)
        return jnp.full_like(t, 1.0) * self.step_size

    def penalized_objective(
        self, model_fn: ModelFn, variables: Any, x_adv: jax.Array, x: jax.Array, y: Any
    ) -> jax.Array:
        """``phi(x') = ±loss(f(x'), y) - gamma ||x' - x||_2^2`` per example (Eq. 2.41)."""
        sign = -1.0 if self.targeted else 1.0
        value = sign * losses.get_loss(self.loss)(model_fn(variables, x_adv), y)
        return value - self.gamma * transport_cost(x_adv, x)

    @validated
    def run(
        self, model_fn: ModelFn, variables: Any, x: jax.Array, y: Any, key: jax.Array
    ) -> AttackResult:
        del key  # deterministic: the reference code starts from x
        loss_fn = losses.get_loss(self.loss)
        sign = -1.0 if self.targeted else 1.0

        def objective(x_adv):
            logits = model_fn(variables, x_adv)
            per_example = sign * loss_fn(logits, y)
            return jnp.sum(per_example), (per_example, logits)

        grad_fn = jax.grad(objective, has_aux=True)
        x = jax.lax.stop_gradient(x)
        eps = jnp.asarray(self.eps, x.dtype)

        def step(x_adv, rate):
            grad, _ = grad_fn(x_adv)
            x_next = x_adv + rate.astype(x.dtype) * (eps * grad - (x_adv - x))
            return (jnp.clip(x_next, 0.0, 1.0) if self.clip else x_next), None

        unroll = self.unroll if self.unroll is not True else max(1, int(self.steps))
        x_last, _ = jax.lax.scan(step, x, self.rates(), unroll=unroll)
        score, logits = objective(x_last)[1]
        return AttackResult(
            x_adv=jax.lax.stop_gradient(x_last),
            loss=score,
            success=success(logits, y, self.targeted),
        )


def wrm(
    gamma: float,
    *,
    steps: int = 16,
    step_size: float = 1.0,
    schedule: str = "inv_sqrt",
    loss: Any = "ce",
    targeted: bool = False,
    clip: bool = True,
    unroll: int | bool | None = None,
) -> WRM:
    """WRM's adversary (Sinha et al. 2018, ``attacks_tf.py``): ``steps`` ascent updates on
    ``loss - gamma ||x' - x||_2^2`` from ``x`` with rates ``step_size / sqrt(t + 1)``, kept in
    [0, 1]; last iterate.

    ``gamma`` is the Lagrange multiplier (the thesis's and reference code's ``eps = 0.5 / gamma``;
    ``gamma_from_eps``). It has no default: the thesis's best is 0.5 on CIFAR-10/100 (Table 8, spec
    P22) and 0.05 on MNIST, and the reference MNIST script uses ``eps = 1.3``
    (``gamma = 0.385``). The reference code's gradient ascent converges to the maximiser when
    ``phi`` is strongly concave (``gamma`` above half the loss's smoothness constant, Sinha et al.
    Thm. 2); smaller ``gamma`` gives larger perturbations. ``unroll=None`` unrolls fully up to
    ``UNROLL_MAX_STEPS`` steps, as ``pgd``.
    """
    if unroll is None:
        unroll = int(steps) <= UNROLL_MAX_STEPS
    return WRM(
        gamma=gamma,
        steps=steps,
        step_size=step_size,
        schedule=schedule,
        loss=loss,
        targeted=targeted,
        clip=clip,
        scale=1.0,
        unroll=unroll,
    )
