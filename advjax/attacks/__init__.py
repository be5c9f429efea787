"""Pure, jittable, vmappable attacks: ``attack(model_fn, variables, x, y, key) -> x_adv``.

Factories share one vocabulary: ``eps`` (budget; ``eps_flow``/``eps_affine``, ``max_angle``/
``max_translation`` for spatial sets) first, then ``step_size``, ``steps`` (iterations, queries or
tries), then keyword-only options such as ``norm``, ``loss``, ``restarts``, ``num_targets`` and
``targeted`` (``y`` are then the targets). ``build(spec)`` makes any attack from a nested dict
``{"name": <key of ATTACKS>, **hyperparameters}`` (``advjax.attacks.registry``).

Black-box attacks use forward passes only: score-based ones read the logits (``square``,
``spsa``), decision-based ones the predicted label alone (``rays``, ``hop_skip_jump``).
"""

from advjax.attacks.adaptive_boundary import FAB, fab, fab_t
from advjax.attacks.auto_attack import autoattack
from advjax.attacks.autopgd import APGD, APGDTargeted, apgd, apgd_t
from advjax.attacks.base import Attack, AttackResult, QueryAttack, split_keys, success
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
from advjax.attacks.hop_skip_jump import HopSkipJump, hop_skip_jump
from advjax.attacks.minimum_norm import cw_l2, ddn
from advjax.attacks.multitarget import MultiTargeted, multitargeted, untargeted
from advjax.attacks.ray_search import RayS, rays
from advjax.attacks.registry import ATTACKS, build, hyperparameters
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
from advjax.attacks.spsa import SPSA, spsa
from advjax.attacks.square_search import Square, square
from advjax.attacks.surrogate import Transfer, transfer
from advjax.attacks.udr import UDRAttack, udr
from advjax.attacks.wrm import WRM, wrm

__all__ = [
    "UDRAttack",
    "WRM",
    "wrm",
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
    "HopSkipJump",
    "JSMA",
    "MultiTargeted",
    "Pointwise",
    "RayS",
    "SPSA",
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
    "hop_skip_jump",
    "jsma",
    "multitargeted",
    "pointwise",
    "untargeted",
    "rays",
    "spsa",
    "square",
    "udr",
    "transfer",
    "ATTACKS",
    "Attack",
    "QueryAttack",
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
    "build",
    "hyperparameters",
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
