"""Defenses: training objectives ``defense(model, variables, batch, keys) -> (loss, aux)``."""

from __future__ import annotations

from typing import Any

from advjax import attacks
from advjax.defenses.objectives import (
    CrossEntropyOn,
    WeightedSum,
    fast_at,
    natural,
    pgd_at,
    weighted_sum,
)


def _pgd_at(cfg) -> CrossEntropyOn:
    return pgd_at(
        attacks.pgd(
            cfg.eps,
            cfg.step_size,
            cfg.steps,
            norm=cfg.get("norm", "linf"),
            random_init=cfg.get("random_init", True),
            keep_best=False,
        )
    )


def _fast_at(cfg) -> CrossEntropyOn:
    step = cfg.get("step_size", None)
    return fast_at(attacks.fgsm_rs(cfg.eps, step_size=step, norm=cfg.get("norm", "linf")))


DEFENSES = {
    "natural": lambda cfg: natural(),
    "pgd_at": _pgd_at,
    "fast_at": _fast_at,
}


def get_defense(cfg: Any):
    """Builds a defense from a config with a ``name`` field (see ``DEFENSES``)."""
    name = cfg.name
    if name not in DEFENSES:
        raise ValueError(f"unknown defense {name!r}; valid defenses: {', '.join(sorted(DEFENSES))}")
    return DEFENSES[name](cfg)


__all__ = [
    "DEFENSES",
    "CrossEntropyOn",
    "WeightedSum",
    "fast_at",
    "get_defense",
    "natural",
    "pgd_at",
    "weighted_sum",
]
