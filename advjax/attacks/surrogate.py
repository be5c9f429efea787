"""Transfer (black-box) attack: craft on a surrogate model, evaluate on the target.

::

    attack = advjax.attacks.surrogate(advjax.attacks.pgd(8 / 255, 2 / 255, 1000), surrogate_fn)
    result = attack.run(target_fn, (target_variables, surrogate_variables), x, y, key)

The attack keeps the attack contract ``attack(model_fn, variables, x, y, key)``: ``model_fn`` is
the TARGET model, and ``variables`` is the pair ``(target_variables, surrogate_variables)``; the
surrogate's (hashable) ``model_fn`` is part of the frozen attack, like any other static
hyperparameter. The inner attack sees only the surrogate; the target is queried once, at the
final ``x_adv``, for ``loss`` and ``success``. The pair is an ordinary pytree, so the attack jits
with ``model_fn`` static and vmaps over stacked target and/or surrogate variables.

The ATLAS paper's black-box evaluation uses PGD-1000 on the surrogate.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax

from advjax import losses
from advjax.attacks.base import Attack, AttackResult, ModelFn, success, validated


@dataclasses.dataclass(frozen=True)
class Transfer(Attack):
    """``attack`` run on ``surrogate_fn``; ``loss`` and ``success`` measured on the target.

    Attributes:
      attack: the inner attack, run on the surrogate with the same ``x, y, key``.
      surrogate_fn: the surrogate's ``model_fn(variables, x) -> logits`` (hashable).
      loss: the target-side objective reported as ``loss``: a name from ``advjax.losses`` or a
        callable; ``None`` takes the inner attack's ``loss`` attribute (``"ce"`` if it has none).
        Negated for targeted inner attacks, as in the inner attacks.
    """

    attack: Attack
    surrogate_fn: ModelFn
    loss: Any

    def __post_init__(self):
        if not isinstance(self.attack, Attack):
            raise TypeError(f"transfer needs an advjax Attack, got {type(self.attack).__name__}")
        if not callable(self.surrogate_fn):
            raise TypeError("surrogate_fn must be a model function (variables, x) -> logits")
        losses.get_loss(self._loss_name())

    def _loss_name(self) -> Any:
        if self.loss is not None:
            return self.loss
        inner = getattr(self.attack, "loss", "ce")
        return inner if isinstance(inner, str) or callable(inner) else "ce"

    def scaled(self, factor: Any) -> Transfer:
        return dataclasses.replace(self, attack=self.attack.scaled(factor))

    @validated
    def run(
        self, model_fn: ModelFn, variables: Any, x: jax.Array, y: Any, key: jax.Array
    ) -> AttackResult:
        if not (isinstance(variables, tuple | list) and len(variables) == 2):
            raise TypeError(
                "a transfer attack takes variables=(target_variables, surrogate_variables), "
                f"got {type(variables).__name__}"
            )
        target_variables, surrogate_variables = variables
        x_adv = self.attack.run(self.surrogate_fn, surrogate_variables, x, y, key).x_adv
        x_adv = jax.lax.stop_gradient(x_adv)
        logits = model_fn(target_variables, x_adv)
        targeted = bool(getattr(self.attack, "targeted", False))
        sign = -1.0 if targeted else 1.0
        return AttackResult(
            x_adv=x_adv,
            loss=sign * losses.get_loss(self._loss_name())(logits, y),
            success=success(logits, y, targeted),
        )


def transfer(attack: Attack, surrogate_fn: ModelFn, *, loss: Any = None) -> Transfer:
    """Transfer attack: ``attack`` crafted on ``surrogate_fn``, evaluated on the target model.

    Call it with the target's ``model_fn`` and ``variables=(target_variables,
    surrogate_variables)``. The ATLAS paper's default is ``attack = pgd(eps, step, 1000)``.
    """
    return Transfer(attack, surrogate_fn, loss)
