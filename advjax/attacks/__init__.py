"""Pure, jittable, vmappable attacks: ``attack(model_fn, variables, x, y, key) -> x_adv``."""

from advjax.attacks.base import Attack, AttackResult, split_keys, success
from advjax.attacks.combinators import (
    Cascade,
    Restarts,
    WorstCase,
    cascade,
    restarts,
    worst_case,
)
from advjax.attacks.gradient import (
    GradientAttack,
    RandFGSM,
    bim,
    fgsm,
    fgsm_rs,
    mifgsm,
    pgd,
    rfgsm,
)

ATTACKS = {
    "fgsm": fgsm,
    "fgsm_rs": fgsm_rs,
    "rfgsm": rfgsm,
    "bim": bim,
    "pgd": pgd,
    "mifgsm": mifgsm,
}


def get_attack(name: str, **hyperparameters) -> Attack:
    """Builds an attack by name (see ``ATTACKS``) with keyword hyperparameters."""
    if name not in ATTACKS:
        raise ValueError(f"unknown attack {name!r}; valid attacks: {', '.join(sorted(ATTACKS))}")
    return ATTACKS[name](**hyperparameters)


__all__ = [
    "ATTACKS",
    "Attack",
    "AttackResult",
    "Cascade",
    "GradientAttack",
    "RandFGSM",
    "Restarts",
    "WorstCase",
    "bim",
    "cascade",
    "fgsm",
    "fgsm_rs",
    "get_attack",
    "mifgsm",
    "pgd",
    "restarts",
    "rfgsm",
    "split_keys",
    "success",
    "worst_case",
]
