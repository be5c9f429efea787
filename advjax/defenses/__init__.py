"""Defenses: training objectives ``defense(model, variables, batch, keys) -> (loss, aux)``."""

from __future__ import annotations

from typing import Any

from advjax import attacks
from advjax.defenses import regularized, semi_supervised
from advjax.defenses.objectives import (
    CrossEntropyOn,
    WeightedSum,
    attack_from_defense_config,
    fast_at,
    natural,
    pgd_at,
    warmup_steps,
    weighted_sum,
)
from advjax.defenses.regularized import (
    Regularized,
    atlas,
    atlas_g,
    atlas_l,
    jac,
    jacobian_norm_estimate,
    kl_attack_loss,
    kl_term,
    mart,
    trades,
    trades_jac,
)
from advjax.defenses.semi_supervised import SemiSupervisedRobust, fast_srt, rt, srt


def _pgd_at(cfg, steps_per_epoch: int) -> CrossEntropyOn:
    """PGD-AT; with ``cfg.attack`` any attack (``attack=dict(name="worst_of_k", k=10)`` is
    Worst-of-k adversarial training, Engstrom et al. 2019)."""
    return pgd_at(attack_from_defense_config(cfg), warmup_steps(cfg, steps_per_epoch))


def _fast_at(cfg, steps_per_epoch: int) -> CrossEntropyOn:
    attack = attacks.fgsm_rs(
        cfg.eps, step_size=cfg.get("step_size", None), norm=cfg.get("norm", "linf")
    )
    return fast_at(attack, warmup_steps(cfg, steps_per_epoch))


DEFENSES = {
    "natural": lambda cfg, steps_per_epoch: natural(),
    "pgd_at": _pgd_at,
    "fast_at": _fast_at,
    # Regularised objectives (advjax.defenses.regularized).
    "trades": regularized.trades_from_config,
    "mart": regularized.mart_from_config,
    "jac": regularized.jac_from_config,
    "atlas": regularized.atlas_from_config,
    "atlas_l": regularized.atlas_l_from_config,
    "atlas_g": regularized.atlas_g_from_config,
    "trades_jac": regularized.trades_jac_from_config,
    "klr": regularized.klr_from_config,
    # Semi-supervised robust training (advjax.defenses.semi_supervised, SRT document).
    "rt": semi_supervised.rt_from_config,
    "srt": semi_supervised.srt_from_config,
    "fast_srt": semi_supervised.fast_srt_from_config,
}


def get_defense(cfg: Any, steps_per_epoch: int = 1):
    """Builds a defense from a config with a ``name`` field (see ``DEFENSES``).

    ``steps_per_epoch`` converts epoch counts in the config (``eps_warmup_epochs``) to steps.
    """
    name = cfg.name
    if name not in DEFENSES:
        raise ValueError(f"unknown defense {name!r}; valid defenses: {', '.join(sorted(DEFENSES))}")
    return DEFENSES[name](cfg, steps_per_epoch)


__all__ = [
    "SemiSupervisedRobust",
    "fast_srt",
    "rt",
    "srt",
    "DEFENSES",
    "CrossEntropyOn",
    "Regularized",
    "WeightedSum",
    "atlas",
    "atlas_g",
    "atlas_l",
    "fast_at",
    "get_defense",
    "jac",
    "jacobian_norm_estimate",
    "kl_attack_loss",
    "kl_term",
    "mart",
    "natural",
    "pgd_at",
    "trades",
    "trades_jac",
    "weighted_sum",
]
