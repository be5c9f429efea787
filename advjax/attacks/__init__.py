"""Pure, jittable, vmappable attacks: ``attack(model_fn, variables, x, y, key) -> x_adv``."""

from advjax.attacks.adaptive_boundary import FAB, fab, fab_t
from advjax.attacks.auto_attack import autoattack
from advjax.attacks.autopgd import APGD, APGDTargeted, apgd, apgd_t
from advjax.attacks.base import Attack, AttackResult, split_keys, success
from advjax.attacks.brendel_bethge import BrendelBethge, brendel_bethge
from advjax.attacks.combinators import (
    Cascade,
    Restarts,
    Sequence,
    WorstCase,
    cascade,
    restarts,
    sequence,
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
from advjax.attacks.minimum_norm import cw_l2, ddn
from advjax.attacks.multitarget import MultiTargeted, multitargeted, untargeted
from advjax.attacks.ray_search import RayS, rays
from advjax.attacks.sparse import JSMA, Pointwise, jsma, pointwise
from advjax.attacks.spatial import (
    GridSearch,
    RandomSearch,
    SpatialAttack,
    SpatialPGD,
    affine_pgd,
    flow_pgd,
    grid_adv,
    integrated_spatial,
    rand_adv,
    rt_pgd,
    worst_of_k,
)
from advjax.attacks.square_search import Square, square
from advjax.attacks.surrogate import Transfer, transfer

ATTACKS = {
    "fgsm": fgsm,
    "fgsm_rs": fgsm_rs,
    "rfgsm": rfgsm,
    "bim": bim,
    "pgd": pgd,
    "mifgsm": mifgsm,
    "apgd": apgd,
    "apgd_t": apgd_t,
    "fab": fab,
    "fab_t": fab_t,
    "square": square,
    "rays": rays,
    "cw_l2": cw_l2,
    "ddn": ddn,
    "brendel_bethge": brendel_bethge,
    "autoattack": autoattack,
    "untargeted": untargeted,
    "multitargeted": multitargeted,
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
}


def get_attack(name: str, **hyperparameters) -> Attack:
    """Builds an attack by name (see ``ATTACKS``) with keyword hyperparameters."""
    if name not in ATTACKS:
        raise ValueError(f"unknown attack {name!r}; valid attacks: {', '.join(sorted(ATTACKS))}")
    return ATTACKS[name](**hyperparameters)


__all__ = [
    "GridSearch",
    "RandomSearch",
    "SpatialAttack",
    "SpatialPGD",
    "affine_pgd",
    "flow_pgd",
    "grid_adv",
    "integrated_spatial",
    "rand_adv",
    "rt_pgd",
    "worst_of_k",
    "APGD",
    "APGDTargeted",
    "BrendelBethge",
    "FAB",
    "JSMA",
    "MultiTargeted",
    "Pointwise",
    "RayS",
    "Square",
    "Transfer",
    "apgd",
    "apgd_t",
    "autoattack",
    "brendel_bethge",
    "cw_l2",
    "ddn",
    "fab",
    "fab_t",
    "jsma",
    "multitargeted",
    "pointwise",
    "untargeted",
    "rays",
    "square",
    "transfer",
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
    "sequence",
    "Sequence",
    "split_keys",
    "success",
    "worst_case",
]
