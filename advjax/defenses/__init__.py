"""Defenses: training objectives as weighted sums of terms (``advjax.defenses.core``).

``defenses.build(spec)`` is the one path from a nested spec to a defense::

    defenses.build({"name": "trades", "beta": 1.0,
                    "attack": {"name": "fgsm_rs", "eps": 0.3}, "eps_warmup_epochs": 15},
                   steps_per_epoch=390)

``name`` picks a factory of ``DEFENSES``; the other keys are its keyword arguments, whose defaults
live in the factory signatures only. Nested attack specs (a dict with a ``name``, a list or a
``{view: spec}`` mapping of them) are built with ``advjax.attacks.build``; an attack spec without
a ``loss`` gets the one the defense needs (the KL of ``kl_base`` for TRADES-style adversaries).
``eps_warmup_epochs`` becomes ``eps_warmup_steps`` with ``steps_per_epoch`` (and
``awp_warmup_epochs`` ``awp_warmup_steps``, for ``awp_at`` / ``udr_awp_at``).
``adversary_bn_mode="train"`` generates every adversary with BatchNorm in training mode (batch
statistics, running averages untouched; thesis spec Sec. 8.5 and 9.8 item 10) instead of
inference mode.

Registered recipes that are other defenses under their papers' names: ``fast_at`` is ``pgd_at``
(with ``attacks.fgsm_rs`` and a cyclic learning rate, Wong et al. 2020) and ``fast_srt`` is ``srt``
(SRT App. J).
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable, Mapping
from typing import Any

from advjax import attacks
from advjax.defenses import terms
from advjax.defenses.awp import AWP, awp_at, with_awp
from advjax.defenses.core import (
    Adversary,
    Defense,
    FromState,
    IndependentMembers,
    StateRule,
    StepContext,
    Views,
    WarmupScaled,
    WeightPerturbation,
    check_choice,
    for_model,
)
from advjax.defenses.jacobian import jacobian_norm_estimate, projection_vectors
from advjax.defenses.pareto import ParetoWindow, pareto_at, solve_lower_level
from advjax.defenses.published import (
    atlas,
    atlas_g,
    atlas_l,
    ave_at,
    jac,
    klr,
    mart,
    max_at,
    natural,
    pgd_at,
    rt,
    srt,
    trades,
    trades_jac,
)
from advjax.defenses.semi_supervised import OnlineTargetKL, rst, uat
from advjax.defenses.state import MovingAverage
from advjax.defenses.terms import kl_attack_loss, kl_term
from advjax.defenses.udr import learned_lambda, udr_awp_at, udr_mart, udr_pgd, udr_trades
from advjax.defenses.udr_state import LambdaFromState, UDRLambda, udr_lambda

DEFENSES: dict[str, Callable[..., Defense]] = {
    "natural": natural,
    "pgd_at": pgd_at,
    "fast_at": pgd_at,
    "trades": trades,
    "mart": mart,
    "jac": jac,
    "atlas": atlas,
    "atlas_l": atlas_l,
    "atlas_g": atlas_g,
    "trades_jac": trades_jac,
    "klr": klr,
    "rt": rt,
    "srt": srt,
    "fast_srt": srt,
    "uat": uat,
    "rst": rst,
    "ave_at": ave_at,
    "max_at": max_at,
    "pareto_at": pareto_at,
    "udr_pgd": udr_pgd,
    "udr_trades": udr_trades,
    "udr_mart": udr_mart,
    "awp_at": awp_at,
    "udr_awp_at": udr_awp_at,
}


def _default(factory: Callable, name: str, given: Mapping[str, Any]) -> Any:
    if name in given:
        return given[name]
    parameter = inspect.signature(factory).parameters.get(name)
    return None if parameter is None else parameter.default


def _attack_loss(factory: Callable, kwargs: Mapping[str, Any]) -> str | None:
    """The loss a defense's adversary must maximise when its spec does not name one."""
    if factory in (trades, trades_jac, klr, rst, udr_trades) or (
        factory in (mart, udr_mart) and _default(factory, "variant", kwargs) == "thesis"
    ):
        return kl_attack_loss(_default(factory, "kl_base", kwargs))
    return None


def _is_attack_spec(value: Any) -> bool:
    return isinstance(value, Mapping) and "name" in value


def _build_attacks(value: Any, loss: str | None) -> Any:
    """Builds the attack specs in ``value`` (a spec, a list of specs, a mapping of specs)."""
    if _is_attack_spec(value):
        spec = dict(value)
        if loss is not None:
            spec.setdefault("loss", loss)
        return attacks.build(spec)
    if isinstance(value, Mapping) and value and all(_is_attack_spec(v) for v in value.values()):
        return {k: _build_attacks(v, loss) for k, v in value.items()}
    if isinstance(value, list | tuple) and value and all(_is_attack_spec(v) for v in value):
        return [_build_attacks(v, loss) for v in value]
    return value


def _plain(spec: Any) -> Any:
    """A nested spec with ``ml_collections.ConfigDict`` levels as plain dicts."""
    if hasattr(spec, "to_dict"):
        spec = spec.to_dict()
    if isinstance(spec, Mapping):
        return {k: _plain(v) for k, v in spec.items()}
    return spec


def build(spec: Mapping[str, Any], steps_per_epoch: int = 1) -> Defense:
    """Builds a defense from a nested spec (see the module docstring and ``DEFENSES``)."""
    kwargs = _plain(spec)
    if "name" not in kwargs:
        raise ValueError(f"a defense spec needs a 'name'; valid names: {', '.join(DEFENSES)}")
    name = kwargs.pop("name")
    if name not in DEFENSES:
        raise ValueError(f"unknown defense {name!r}; valid defenses: {', '.join(DEFENSES)}")
    factory = DEFENSES[name]
    for warmup in ("eps_warmup", "awp_warmup"):
        if f"{warmup}_epochs" in kwargs:
            if f"{warmup}_steps" in kwargs:
                raise ValueError(f"give {warmup}_epochs or {warmup}_steps, not both")
            epochs = kwargs.pop(f"{warmup}_epochs")
            kwargs[f"{warmup}_steps"] = int(epochs * steps_per_epoch)
    bn_mode = kwargs.pop("adversary_bn_mode", "inference")
    check_choice("adversary_bn_mode", bn_mode, ("inference", "train"))
    valid = inspect.signature(factory).parameters
    unknown = sorted(set(kwargs) - set(valid))
    if unknown:
        raise ValueError(
            f"defense {name!r} has no hyperparameter {', '.join(map(repr, unknown))}; valid: "
            f"{', '.join(p for p in valid if p != 'name')} (and eps_warmup_epochs, "
            "adversary_bn_mode)"
        )
    loss = _attack_loss(factory, kwargs)
    kwargs = {k: _build_attacks(v, loss) for k, v in kwargs.items()}
    defense = factory(**kwargs)
    if bn_mode == "train":
        adversaries = tuple(dataclasses.replace(a, bn_train_mode=True) for a in defense.adversaries)
        defense = dataclasses.replace(defense, adversaries=adversaries)
    return defense


__all__ = [
    "AWP",
    "DEFENSES",
    "Adversary",
    "Defense",
    "FromState",
    "IndependentMembers",
    "LambdaFromState",
    "MovingAverage",
    "OnlineTargetKL",
    "ParetoWindow",
    "StateRule",
    "StepContext",
    "UDRLambda",
    "Views",
    "WarmupScaled",
    "WeightPerturbation",
    "atlas",
    "atlas_g",
    "atlas_l",
    "ave_at",
    "awp_at",
    "build",
    "for_model",
    "jac",
    "jacobian_norm_estimate",
    "learned_lambda",
    "kl_attack_loss",
    "kl_term",
    "klr",
    "mart",
    "max_at",
    "natural",
    "pareto_at",
    "pgd_at",
    "projection_vectors",
    "rst",
    "rt",
    "solve_lower_level",
    "srt",
    "terms",
    "trades",
    "trades_jac",
    "udr_awp_at",
    "udr_lambda",
    "udr_mart",
    "udr_pgd",
    "udr_trades",
    "uat",
    "with_awp",
]
