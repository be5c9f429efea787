"""AutoAttack (Croce & Hein 2020): a parameter-free ensemble, each run on the points still robust.

Versions, as in the reference ``autoattack.AutoAttack.set_version``:

* ``standard``: APGD-CE (100 iterations, 1 restart), APGD-T (targeted DLR, 9 target classes),
  FAB-T (9 target classes), Square (5,000 queries). For L1: APGD-CE and APGD-T only (5 restarts,
  5 target classes), as the reference.
* ``plus``: APGD-CE and APGD-DLR with 5 restarts, FAB (untargeted, 5 restarts) where available,
  Square, APGD-T, FAB-T.
* ``rand``: APGD-CE and APGD-DLR with expectation over 20 draws of the model's randomness
  (randomised models read a key from ``variables[MODEL_KEY]``, see ``attacks.base``).

Built on ``cascade``: each attack runs only on the points no earlier attack broke, gathered into
the smallest static bucket of rows that holds them (``compaction.on_active``: fixed shapes, one
compilation per bucket), and not at all once the batch is broken. The result is the per-point worst
case (a point is robust only if it survives every component), never an average.
"""

from __future__ import annotations

from advjax.attacks import adaptive_boundary as fab
from advjax.attacks import autopgd as apgd
from advjax.attacks import square_search as square
from advjax.attacks.base import Attack
from advjax.attacks.combinators import cascade

VERSIONS = ("standard", "plus", "rand")
# Static sizes (fractions of the rows a component gets) that APGD-T and FAB-T gather the points
# still robust into before each target class (compaction.on_active).
TARGET_BUCKETS = (1.0, 0.5)

# Component names are the registry / evaluation-preset names (``advjax.eval.presets``).
COMPONENTS = {
    "standard": ("apgd_ce", "apgd_t", "fab_t", "square"),
    "plus": ("apgd_ce", "apgd_dlr", "fab", "square", "apgd_t", "fab_t"),
    "rand": ("apgd_ce", "apgd_dlr"),
}


def components(
    eps: float, norm: str = "linf", version: str = "standard", num_classes: int = 10
) -> dict[str, Attack]:
    """The named component attacks of a version, with the reference's hyperparameters."""
    if version not in VERSIONS:
        raise ValueError(f"unknown AutoAttack version {version!r}; valid: {', '.join(VERSIONS)}")
    if norm not in ("linf", "l2", "l1"):
        raise ValueError(f"unknown norm {norm!r}; valid norms: linf, l2, l1")
    if num_classes < 4:
        raise ValueError(f"AutoAttack's DLR losses need at least 4 classes, got {num_classes}")
    targets = min(9, num_classes - 1)
    if norm == "l1" and version == "standard":
        return {
            "apgd_ce": apgd.apgd(eps, norm="l1", loss="ce", restarts=5, use_largereps=True),
            "apgd_t": apgd.apgd_t(
                eps, norm="l1", num_targets=min(5, num_classes - 1), use_largereps=True
            ),
        }
    restarts = 5 if version == "plus" else 1
    eot = 20 if version == "rand" else 1
    built: dict[str, Attack] = {}
    for name in COMPONENTS[version]:
        if name == "apgd_ce":
            built[name] = apgd.apgd(eps, norm=norm, loss="ce", restarts=restarts, eot_samples=eot)
        elif name == "apgd_dlr":
            built[name] = apgd.apgd(eps, norm=norm, loss="dlr", restarts=restarts, eot_samples=eot)
        elif name == "apgd_t":
            built[name] = apgd.apgd_t(eps, norm=norm, num_targets=targets, buckets=TARGET_BUCKETS)
        elif name == "fab_t":
            built[name] = fab.fab_t(eps, norm=norm, num_targets=targets, buckets=TARGET_BUCKETS)
        elif name == "fab":
            built[name] = fab.fab(eps, norm=norm, restarts=restarts)
        elif name == "square" and norm in ("linf", "l2"):
            # The reference's AutoAttack reads Square's p schedule on the absolute 10,000-query
            # scale (resc_schedule=False), so at 5,000 queries the squares never reach the
            # smallest sizes (fra31/auto-attack autoattack.py).
            built[name] = square.square(eps, norm=norm, rescale_schedule=False)
    return built


def autoattack(
    eps: float, *, norm: str = "linf", version: str = "standard", num_classes: int = 10
) -> Attack:
    """AutoAttack ``version`` at budget ``eps`` as one cascade attack (components: ``COMPONENTS``,
    for a model with ``num_classes`` classes)."""
    return cascade(*components(eps, norm, version, num_classes).values())
