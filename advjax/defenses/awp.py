"""Adversarial weight perturbation (AWP, Wu et al. 2020; spec ``thesis_ch5_6.md`` Sec. 5.5)::

    min_w max_{||v_l|| <= gamma ||w_l||} E[ L(f_{w + v}(x^a), y) ],   x^a = attack(w)

One ascent step of the inner max, as in the reference code: a proxy copy of ``w`` takes one plain
SGD step (rate 0.01) that *maximises* the objective ``J`` (default ``CE(f(x^a), y)``, the proxy in
train mode); for every weight tensor with ``ndim > 1`` (convolution and dense kernels; not
BatchNorm, not biases)::

    v_l = ||w_l|| (w'_l - w_l) / ||w'_l - w_l|| = ||w_l|| g_l / ||g_l||,   g = grad_w J(w)

(the proxy's rate cancels; ``v_l = 0`` where ``g_l = 0``). The defense's passes then run at
``w + gamma v`` and their gradient is applied to ``w`` (Wu et al.'s perturb, step, restore): the
loss is ``L(w + stop_gradient(gamma v))`` (``Defense.weight_perturbation``). Defaults: ``gamma =
0.01`` (``awp_gamma``), no warm-up (``awp_warmup``); during a warm-up of ``T`` steps
``gamma_t = 0``.

* ``with_awp(defense)``: any defense with AWP (``dataclasses.replace``, as ``learned_lambda``).
* ``awp_at``: AWP-AT, ``CE(f_{w + gamma v}(x'), y)`` with a hard-ball (PGD) adversary;
  ``udr_awp_at`` (``advjax.defenses.udr``) is ``learned_lambda(awp_at)`` with a UDR attack.

BatchNorm: the proxy passes are in train mode (batch statistics) and their running averages are
discarded, as the reference code's proxy is a throw-away copy of the model; the loss passes at
``w + gamma v`` update them as a defense's passes always do. Data parallel: ``g`` is averaged over
the devices (``lax.pmean``), so every device perturbs by the same ``v``, the global batch's.
An ``Ensemble`` whose defense couples its members gets one ``v`` per member (norms over each
member's slice); ``IndependentMembers`` perturbs each member on its own. Metrics:
``awp_relative_norm = ||gamma_t v|| / ||w||`` over the perturbed tensors (``gamma_t`` unless some
``g_l = 0``) and ``awp_objective = J(w)``. Known difference from the reference code: ``v`` is
computed from ``g`` rather than from the rounded ``w' - w`` (and without its ``+1e-20``).
"""

from __future__ import annotations

import dataclasses
import numbers
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from advjax.attacks import Attack
from advjax.defenses.core import (
    CLEAN,
    Defense,
    StepContext,
    Views,
    views_needed,
    weight_value,
)
from advjax.defenses.published import pgd_at
from advjax.defenses.terms import CrossEntropy
from advjax.models import Ensemble
from advjax.sharding import AXIS


def _pmean(tree: Any) -> Any:
    """``lax.pmean`` over the data-parallel axis inside a mapped step; ``tree`` outside one."""
    try:
        return jax.lax.pmean(tree, AXIS)
    except NameError:  # unbound axis: the defense is called directly
        return tree


def weight_direction(w: jax.Array, g: jax.Array, leading: int = 0) -> jax.Array:
    """``v = ||w|| g / ||g||`` (norms over the axes after ``leading``), ``0`` where ``g = 0``.

    ``g`` is scaled by its largest entry first, so that a tiny gradient does not underflow."""
    axes = tuple(range(leading, w.ndim))
    peak = jnp.max(jnp.abs(g), axes, keepdims=True)
    nonzero = peak > 0
    g = g / jnp.where(nonzero, peak, 1.0)
    g_norm = jnp.sqrt(jnp.sum(jnp.square(g), axes, keepdims=True))
    w_norm = jnp.sqrt(jnp.sum(jnp.square(w), axes, keepdims=True))
    return jnp.where(nonzero, w_norm * g / jnp.where(nonzero, g_norm, 1.0), 0.0)


@dataclasses.dataclass(frozen=True)
class AWP:
    """AWP as a ``WeightPerturbation`` (module docstring): ``delta = gamma_t v``.

    Attributes:
      gamma: the relative size ``||delta_l|| / ||w_l||`` (``awp_gamma``, 0.01); 0: no
        perturbation (the defense unchanged, nothing computed).
      warmup_steps: ``gamma_t = 0`` for ``step < warmup_steps`` (``awp_warmup``).
      objective: the terms ``J`` the proxy ascends (weighted sum), over the defense's views.
    """

    gamma: float = 0.01
    warmup_steps: int = 0
    objective: tuple[Any, ...] = (CrossEntropy("adv", name="awp"),)

    def __post_init__(self):
        if isinstance(self.gamma, bool) or not isinstance(self.gamma, numbers.Real):
            raise ValueError(f"AWP gamma must be a number >= 0, got {self.gamma!r}")
        if not self.gamma >= 0:
            raise ValueError(f"AWP gamma must be >= 0, got {self.gamma}")
        steps = self.warmup_steps
        if isinstance(steps, bool) or int(steps) != steps or steps < 0:
            raise ValueError(f"AWP warmup_steps must be an integer >= 0, got {steps}")
        if not self.objective:
            raise ValueError("AWP needs an objective: at least one term")

    @property
    def terms(self) -> tuple[Any, ...]:
        return tuple(self.objective)

    def gamma_at(self, step: Any) -> Any:
        """``gamma_t``: 0 during the warm-up, ``gamma`` after."""
        if not self.warmup_steps:
            return self.gamma
        return jnp.where(jnp.asarray(step) >= self.warmup_steps, self.gamma, 0.0)

    def __call__(
        self, model: nn.Module, variables: Any, views: Views, context: StepContext
    ) -> tuple[Any, dict[str, jax.Array]]:
        if self.gamma == 0:
            return None, {"awp_relative_norm": jnp.zeros((), jnp.float32)}
        params = jax.lax.stop_gradient(variables["params"])
        needs = views_needed(self.terms)

        def objective(p):
            proxy = views.at(model, {**variables, "params": p}, needs)
            total = 0.0
            for term in self.terms:
                total = total + weight_value(term.weight, context) * term(proxy)[0]
            return total

        value, grads = jax.value_and_grad(objective)(params)
        grads = _pmean(grads)
        leading = 1 if isinstance(model, Ensemble) else 0  # coupled members: one v per member
        gamma = self.gamma_at(context.step)
        leaves, treedef = jax.tree.flatten(params)
        perturbed = [w.ndim > 1 + leading for w in leaves]
        delta = [
            gamma * weight_direction(w, g, leading) if p else jnp.zeros_like(w)
            for w, g, p in zip(leaves, treedef.flatten_up_to(grads), perturbed, strict=True)
        ]
        chosen = [(d, w) for d, w, p in zip(delta, leaves, perturbed, strict=True) if p]
        delta_sq = sum(jnp.sum(jnp.square(d)) for d, _ in chosen)
        w_sq = sum(jnp.sum(jnp.square(w)) for _, w in chosen)
        relative = jnp.sqrt(delta_sq / jnp.maximum(w_sq, jnp.finfo(jnp.float32).tiny))
        metrics = {
            "awp_relative_norm": jnp.asarray(relative, jnp.float32),
            "awp_objective": jnp.asarray(value, jnp.float32),
        }
        return jax.tree.unflatten(treedef, delta), metrics


def with_awp(
    defense: Defense,
    gamma: float = 0.01,
    warmup_steps: int = 0,
    objective: Any = None,
    name: str | None = None,
) -> Defense:
    """``defense`` trained at AWP-perturbed weights (module docstring).

    ``objective``: None, ``CE(f(x'), y)`` on the defense's first adversary (the clean input
    without one; Wu et al.'s AWP-AT); ``"loss"``, the defense's own terms (as Wu et al.'s
    AWP-TRADES); or a tuple of terms."""
    if defense.weight_perturbation is not None:
        raise ValueError(f"defense {defense.name!r} already perturbs its weights")
    if objective is None:
        view = defense.adversaries[0].name if defense.adversaries else CLEAN
        objective = (CrossEntropy(view, name="awp"),)
    elif isinstance(objective, str):
        if objective != "loss":
            raise ValueError(f"unknown AWP objective {objective!r}; valid: None, 'loss', terms")
        objective = defense.terms
    perturbation = AWP(gamma, warmup_steps, tuple(objective))
    return dataclasses.replace(
        defense, weight_perturbation=perturbation, name=name or f"awp_{defense.name}"
    )


def awp_at(
    attack: Attack, gamma: float = 0.01, awp_warmup_steps: int = 0, eps_warmup_steps: int = 0
) -> Defense:
    """AWP-AT (Wu et al. 2020; spec Sec. 5.5): ``CE(f_{w + gamma v}(x'), y)``, ``x' =
    attack(x)`` at ``w`` (PGD), ``v`` ascending the same CE."""
    return with_awp(pgd_at(attack, eps_warmup_steps), gamma, awp_warmup_steps, name="awp_at")
