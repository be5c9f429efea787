"""Training objectives as composable loss terms.

A defense is a pure, differentiable function::

    loss, aux = defense(model, variables, batch, keys)

``model`` is the Flax module: attacks see it in inference mode (``make_model_fn``), the loss is
computed in training mode (``apply_train``, BatchNorm statistics updated). ``keys`` holds one PRNG
key per example so that a data-parallel step gives the same result whatever the device count.
``aux`` is ``{"batch_stats": ..., "metrics": {...}}``.

Terms compose with ``weighted_sum``; natural training, PGD-AT (Madry et al. 2018) and fast AT
(Wong et al. 2020) are each one term.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from advjax import attacks, losses
from advjax.attacks import Attack
from advjax.models import apply_train, make_model_fn

Batch = dict[str, jax.Array]


@dataclasses.dataclass(frozen=True)
class CrossEntropyOn:
    """``mean_i CE(f(x'_i), y_i)`` with ``x' = attack(x)`` (``x' = x`` when ``attack`` is None).

    The attack runs on the model in inference mode with the current parameters, and its output is
    a constant for the parameter gradient (Danskin's theorem, Madry et al. 2018, Sec. 2).
    """

    attack: Attack | None = None
    name: str = "ce"
    eps_warmup_steps: int = 0

    def at_step(self, step: jax.Array) -> CrossEntropyOn:
        """The objective at train step ``step``: the attack budget ramps linearly from 0 to its
        full value over ``eps_warmup_steps`` (epsilon warm-up, ATLAS Sec. 4)."""
        if self.attack is None or not self.eps_warmup_steps:
            return self
        ramp = jnp.minimum(1.0, step.astype(jnp.float32) / self.eps_warmup_steps)
        return dataclasses.replace(self, attack=self.attack.scaled(ramp))

    def __call__(self, model: nn.Module, variables: Any, batch: Batch, keys: jax.Array):
        x, y = batch["image"], batch["label"]
        if self.attack is not None:
            x = jax.lax.stop_gradient(self.attack(make_model_fn(model), variables, x, y, keys))
        logits, batch_stats = apply_train(model, variables, x)
        per_example = losses.cross_entropy(logits, y)
        accuracy = jnp.mean(jnp.argmax(logits, -1) == y)
        metrics = {f"{self.name}_loss": jnp.mean(per_example), f"{self.name}_accuracy": accuracy}
        return jnp.mean(per_example), {"batch_stats": batch_stats, "metrics": metrics}


@dataclasses.dataclass(frozen=True)
class WeightedSum:
    """``sum_k w_k L_k``; BatchNorm statistics come from the last term."""

    terms: tuple[tuple[float, Any], ...]

    def at_step(self, step: jax.Array) -> WeightedSum:
        return WeightedSum(tuple((w, term.at_step(step)) for w, term in self.terms))

    def __call__(self, model: nn.Module, variables: Any, batch: Batch, keys: jax.Array):
        total, metrics, batch_stats = 0.0, {}, {}
        for i, (weight, term) in enumerate(self.terms):
            term_keys = jax.vmap(jax.random.fold_in, (0, None))(keys, i)
            loss, aux = term(model, variables, batch, term_keys)
            total = total + weight * loss
            metrics.update(aux["metrics"])
            batch_stats = aux["batch_stats"] or batch_stats
        return total, {"batch_stats": batch_stats, "metrics": metrics}


def weighted_sum(*weighted_terms: tuple[float, Any]) -> WeightedSum:
    """Composes loss terms: ``weighted_sum((1.0, natural()), (0.5, pgd_at(attack)))``."""
    return WeightedSum(tuple(weighted_terms))


def warmup_steps(cfg: Any, steps_per_epoch: int) -> int:
    """A defense config's ``eps_warmup_epochs`` in train steps."""
    return int(cfg.get("eps_warmup_epochs", 0) * steps_per_epoch)


def pgd_from_config(cfg: Any, loss: str = "ce", steps: int | None = None) -> Attack:
    """The multi-step training adversary of a defense config: PGD maximising ``loss`` with
    ``eps, step_size, steps, norm, random_init``, last iterate (``keep_best=False``).
    ``steps`` overrides ``cfg.steps``."""
    return attacks.pgd(
        cfg.eps,
        cfg.step_size,
        cfg.steps if steps is None else steps,
        norm=cfg.get("norm", "linf"),
        loss=loss,
        random_init=cfg.get("random_init", True),
        keep_best=False,
    )


def attack_from_defense_config(
    cfg: Any, loss: str | None = None, default: dict[str, Any] | None = None
) -> Attack:
    """The inner-maximisation attack of a defense config.

    ``cfg.attack = dict(name=..., **hyperparameters)`` builds any registered attack
    (``advjax.attacks.get_attack``, e.g. ``dict(name="worst_of_k", k=10)`` for the spatial
    defenses); ``loss``, when given and not in the dict, is passed as the attack's ``loss``.
    Without ``cfg.attack``: PGD from ``eps, step_size, steps, norm, random_init`` maximising
    ``loss`` (default cross-entropy), as ``pgd_at``, or the attack of the ``default`` dict.
    """
    spec = cfg.get("attack", None) or default
    if spec:
        params = dict(spec)
        if loss is not None:
            params.setdefault("loss", loss)
        return attacks.get_attack(params.pop("name"), **params)
    return pgd_from_config(cfg, loss or "ce")


def natural() -> CrossEntropyOn:
    """Standard training: cross-entropy on clean inputs."""
    return CrossEntropyOn(None, name="clean")


def pgd_at(attack: Attack, eps_warmup_steps: int = 0) -> CrossEntropyOn:
    """PGD adversarial training (Madry et al. 2018): CE on PGD examples."""
    return CrossEntropyOn(attack, name="adv", eps_warmup_steps=eps_warmup_steps)


def fast_at(attack: Attack, eps_warmup_steps: int = 0) -> CrossEntropyOn:
    """Fast AT (Wong et al. 2020): CE on FGSM-with-random-init examples (``attacks.fgsm_rs``)."""
    return CrossEntropyOn(attack, name="adv", eps_warmup_steps=eps_warmup_steps)
