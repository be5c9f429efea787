"""One path from a spec to an attack: ``build({"name": ..., **hyperparameters})``.

A spec is a (nested) dict: ``name`` is a key of ``ATTACKS``, every other key a keyword argument
of that factory, under the factory's own parameter names; defaults live only in the factory
signatures. Combinators are specs too, their inner attacks nested specs (or built attacks)::

    build({"name": "pgd", "eps": 0.3, "step_size": 0.01, "steps": 40})
    build({"name": "restarts", "restarts": 3, "attack": {"name": "pgd", ...}})
    build({"name": "sequence", "attacks": [{"name": "pgd", ...}, {"name": "grid_adv"}]})
    build({"name": "worst_case", "attacks": [...]})    # likewise "cascade"

A factory parameter named ``attack`` takes one nested spec; a ``*attacks`` parameter takes the list
under ``"attacks"``. Lists elsewhere become tuples (attacks are hashable, jit-static). ``transfer``
also takes its ``surrogate_fn``, a model function, so it is built from Python, not from a config.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Any

from advjax.attacks.adaptive_boundary import fab, fab_t
from advjax.attacks.auto_attack import autoattack
from advjax.attacks.autopgd import apgd, apgd_t
from advjax.attacks.base import Attack
from advjax.attacks.brendel_bethge import brendel_bethge
from advjax.attacks.combinators import cascade, restarts, sequence, worst_case
from advjax.attacks.gradient import bim, fgsm, fgsm_rs, mifgsm, pgd, rfgsm
from advjax.attacks.hop_skip_jump import hop_skip_jump
from advjax.attacks.minimum_norm import cw_l2, ddn
from advjax.attacks.multitarget import multitargeted, untargeted
from advjax.attacks.ray_search import rays
from advjax.attacks.sparse import jsma, pointwise
from advjax.attacks.spatial import (
    affine_pgd,
    flow_pgd,
    grid_adv,
    integrated_spatial,
    rand_adv,
    rt_pgd,
    worst_of_k,
)
from advjax.attacks.spsa import spsa
from advjax.attacks.square_search import square
from advjax.attacks.surrogate import transfer
from advjax.attacks.udr import udr
from advjax.attacks.wrm import wrm

ATTACKS: dict[str, Callable[..., Attack]] = {
    # Lp attacks: gradient-based, then score-based, decision-based and minimum-norm.
    "fgsm": fgsm,
    "fgsm_rs": fgsm_rs,
    "rfgsm": rfgsm,
    "bim": bim,
    "pgd": pgd,
    "mifgsm": mifgsm,
    "udr": udr,
    "wrm": wrm,
    "untargeted": untargeted,
    "multitargeted": multitargeted,
    "apgd": apgd,
    "apgd_t": apgd_t,
    "fab": fab,
    "fab_t": fab_t,
    "square": square,
    "spsa": spsa,
    "rays": rays,
    "hop_skip_jump": hop_skip_jump,
    "cw_l2": cw_l2,
    "ddn": ddn,
    "brendel_bethge": brendel_bethge,
    "autoattack": autoattack,
    # Sparse (L0).
    "jsma": jsma,
    "pointwise": pointwise,
    # Spatial threat models (advjax.threats.spatial).
    "grid_adv": grid_adv,
    "rand_adv": rand_adv,
    "worst_of_k": worst_of_k,
    "rt_pgd": rt_pgd,
    "affine_pgd": affine_pgd,
    "flow_pgd": flow_pgd,
    "integrated_spatial": integrated_spatial,
    # Combinators (their inner attacks are nested specs).
    "restarts": restarts,
    "worst_case": worst_case,
    "cascade": cascade,
    "sequence": sequence,
    "transfer": transfer,
}

NESTED_ATTACK = "attack"  # a factory parameter holding one nested spec


def hyperparameters(name: str) -> list[str]:
    """The hyperparameters of the attack ``name``: its factory's parameter names, in order."""
    return list(inspect.signature(_factory(name)).parameters)


def build(spec: Mapping[str, Any] | Attack) -> Attack:
    """The attack of a spec ``{"name": ..., **hyperparameters}`` (see the module docstring).

    An ``Attack`` is returned as is. Raises ``ValueError`` for an unknown name (listing the valid
    ones), and for unknown or missing hyperparameters (listing the attack's valid ones).
    """
    if isinstance(spec, Attack):
        return spec
    params = _as_dict(spec)
    if "name" not in params:
        valid = ", ".join(sorted(ATTACKS))
        raise ValueError(f"an attack spec needs a 'name' (one of {valid}); got {spec}")
    name = params.pop("name")
    factory = _factory(name)
    args, kwargs = _bind(name, inspect.signature(factory), params)
    return factory(*args, **kwargs)


def _factory(name: str) -> Callable[..., Attack]:
    if name not in ATTACKS:
        raise ValueError(f"unknown attack {name!r}; valid attacks: {', '.join(sorted(ATTACKS))}")
    return ATTACKS[name]


def _as_dict(spec: Any) -> dict[str, Any]:
    """A fresh dict of a spec (a ``Mapping`` or an ``ml_collections.ConfigDict``)."""
    if hasattr(spec, "to_dict"):
        return dict(spec.to_dict())
    if isinstance(spec, Mapping):
        return dict(spec)
    raise TypeError(
        f"an attack spec is a dict {{'name': ..., **hyperparameters}}, got {type(spec).__name__}"
    )


def _bind(
    name: str, signature: inspect.Signature, params: dict[str, Any]
) -> tuple[list[Attack], dict[str, Any]]:
    """Positional ``*attacks`` and keyword hyperparameters for the factory of ``name``."""
    args: list[Attack] = []
    kwargs: dict[str, Any] = {}
    missing = []
    for p in signature.parameters.values():
        if p.kind is inspect.Parameter.VAR_POSITIONAL:
            if p.name not in params:
                missing.append(p.name)
                continue
            args = [build(s) for s in _as_list(name, p.name, params.pop(p.name))]
        elif p.name in params:
            value = params.pop(p.name)
            kwargs[p.name] = build(value) if p.name == NESTED_ATTACK else _hashable(value)
        elif p.default is inspect.Parameter.empty:
            missing.append(p.name)
    valid = ", ".join(signature.parameters)
    if params:
        unknown = ", ".join(sorted(params))
        raise ValueError(
            f"unknown hyperparameter(s) {unknown} for attack {name!r}; valid hyperparameters: "
            f"{valid}"
        )
    if missing:
        raise ValueError(
            f"attack {name!r} needs {', '.join(missing)}; valid hyperparameters: {valid}"
        )
    return args, kwargs


def _as_list(name: str, key: str, value: Any) -> list[Any]:
    if isinstance(value, Mapping) or not isinstance(value, list | tuple):
        raise ValueError(f"{key!r} of attack {name!r} is a list of attack specs, got {value!r}")
    return list(value)


def _hashable(value: Any) -> Any:
    """Lists (e.g. from JSON configs) as tuples, so that the attack stays hashable."""
    if isinstance(value, list | tuple):
        return tuple(_hashable(v) for v in value)
    return value
