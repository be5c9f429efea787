"""Loss terms: small pure functions of a step's views (``advjax.defenses.core.Views``).

Each term is a frozen dataclass with a ``weight`` (a constant or a function of the
``StepContext``), a ``name`` (its metric is ``{name}_loss``), the ``views`` it reads and the
``jacobian_views`` where it needs the input Jacobian. Calling it returns ``(value, metrics)``.

* ``CrossEntropy``: ``mean CE(f(v), y)`` on a view ``v``; ``labels="predicted"`` uses
  ``C(x) = argmax f(x)`` (SRT's robust risk, Eq. 11), ``rows="labeled"`` averages over the
  labeled rows only (SRT's standard risk).
* ``BoostedCrossEntropy``: MART's BCE, ``-log p_y - log(1 - max_{k != y} p_k)`` (Wang et al.
  2020, Eq. 5).
* ``KLDivergence``: ``KL(p(x) || p(x'))`` or ``KL(p(x') || p(x))`` (``base``), optionally weighted
  per example by MART's ``1 - p_y(x)``.
* ``JacobianNorm``: the random-projection estimate of ``||J(v)||_F^2`` (Hoffman et al. 2019;
  ATLAS Eq. 12); also the catastrophic-overfitting monitor.
* ``MaxCrossEntropy``: per-example maximum CE over several views (Max-AT, Tramer & Boneh 2019).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from advjax import losses
from advjax.defenses.core import CLEAN, ROWS, Views, Weight, check_choice
from advjax.defenses.jacobian import check_num_projections

KL_BASES = ("clean", "adv")
LABELS = ("true", "predicted")
KL_WEIGHTINGS = ("none", "clean_misclassification")


def kl_term(clean_logits: jax.Array, adv_logits: jax.Array, kl_base: str = "clean") -> jax.Array:
    """Per-example KL between the clean and adversarial predictions, ``[B]``.

    ``kl_base="clean"``: ``KL(p(x) || p(x'))``, the clean prediction is the base distribution
    (original TRADES and MART code: ``KLDivLoss(log_softmax(f(x')), softmax(f(x)))``).
    ``kl_base="adv"``: ``KL(p(x') || p(x))`` (ATLAS Eq. 13-14; the thesis text's TRADES).
    """
    check_choice("kl_base", kl_base, KL_BASES)
    if kl_base == "clean":
        return losses.kl_from_reference(adv_logits, clean_logits)
    return losses.kl_to_reference(adv_logits, clean_logits)


def kl_attack_loss(kl_base: str = "clean") -> str:
    """The ``advjax.losses`` name an attack maximises for ``kl_term(., ., kl_base)`` when its
    target is the clean logits: ``kl_from_reference`` (``"clean"``) or ``kl_to_reference``."""
    check_choice("kl_base", kl_base, KL_BASES)
    return "kl_from_reference" if kl_base == "clean" else "kl_to_reference"


@dataclasses.dataclass(frozen=True)
class CrossEntropy:
    """``mean_rows CE(f(view), labels)``."""

    view: str = CLEAN
    labels: str = "true"
    rows: str = "all"
    weight: Weight = 1.0
    name: str = "ce"

    def __post_init__(self):
        check_choice("labels", self.labels, LABELS)
        check_choice("rows", self.rows, ROWS)

    jacobian_views = ()

    @property
    def views(self) -> tuple[str, ...]:
        return (self.view,)

    @property
    def reads_unlabeled_labels(self) -> bool:
        return self.labels == "true" and self.rows == "all"

    def per_example(self, logits: jax.Array, y: jax.Array) -> jax.Array:
        return losses.cross_entropy(logits, y)

    def __call__(self, views: Views) -> tuple[jax.Array, dict[str, jax.Array]]:
        logits = views.logits(self.view)
        y = views.labels if self.labels == "true" else views.predicted
        value = views.mean(self.per_example(logits, y), self.rows)
        metrics = {}
        if self.labels == "predicted":  # prediction kept under attack (SRT Eq. 4's 0/1 loss)
            kept = (jnp.argmax(logits, -1) == y).astype(jnp.float32)
            metrics[f"{self.name}_consistency"] = views.mean(kept, self.rows)
        return value, metrics


@dataclasses.dataclass(frozen=True)
class BoostedCrossEntropy(CrossEntropy):
    """MART's boosted CE ``-log p_y - log(1 - max_{k != y} p_k + 1e-12)``
    (``losses.boosted_cross_entropy``) on a view."""

    def per_example(self, logits: jax.Array, y: jax.Array) -> jax.Array:
        return losses.boosted_cross_entropy(logits, y)


@dataclasses.dataclass(frozen=True)
class KLDivergence:
    """``mean_i w_i KL`` between the predictions on ``clean`` and ``adv`` (``kl_term``).

    ``weighting="clean_misclassification"``: ``w_i = 1 - p_y(x_i)`` (MART Eq. 8, not detached,
    as in MART's code); the reported ``{name}_loss`` is then the unweighted mean KL.
    """

    clean: str = CLEAN
    adv: str = "adv"
    base: str = "clean"
    weighting: str = "none"
    weight: Weight = 1.0
    name: str = "kl"
    jacobian_views = ()

    def __post_init__(self):
        check_choice("kl_base", self.base, KL_BASES)
        check_choice("KL weighting", self.weighting, KL_WEIGHTINGS)

    @property
    def views(self) -> tuple[str, ...]:
        return (self.clean, self.adv)

    @property
    def reads_unlabeled_labels(self) -> bool:
        return self.weighting == "clean_misclassification"

    def __call__(self, views: Views) -> tuple[jax.Array, dict[str, jax.Array]]:
        clean_logits = views.logits(self.clean)
        kl = kl_term(clean_logits, views.logits(self.adv), self.base)
        if self.weighting == "none":
            return jnp.mean(kl), {}
        metrics = {f"{self.name}_loss": jnp.mean(kl)}
        y = views.labels[:, None].astype(jnp.int32)
        p_true = jnp.take_along_axis(jax.nn.softmax(clean_logits, -1), y, -1)[:, 0]
        return jnp.mean(kl * (1.0 - p_true)), metrics


@dataclasses.dataclass(frozen=True)
class JacobianNorm:
    """``mean_i ||J(v_i)||_F^2`` estimated with ``num_projections`` random projections per example
    (``advjax.defenses.jacobian``), differentiating the view's own training-mode pass."""

    view: str = "adv"
    num_projections: int = 1
    weight: Weight = 1.0
    name: str = "jac"
    reads_unlabeled_labels = False

    def __post_init__(self):
        check_num_projections(self.num_projections)

    @property
    def views(self) -> tuple[str, ...]:
        return (self.view,)

    @property
    def jacobian_views(self) -> tuple[str, ...]:
        return (self.view,)

    def __call__(self, views: Views) -> tuple[jax.Array, dict[str, jax.Array]]:
        return jnp.mean(views.jacobian(self.view, int(self.num_projections))), {}


@dataclasses.dataclass(frozen=True)
class MaxCrossEntropy:
    """``mean_i max_v CE(f(v_i), y_i)`` for ``v`` in ``over``: the per-example worst of several
    adversaries (Max-AT, Tramer & Boneh 2019; seed 001 Sec. 4.1)."""

    over: tuple[str, ...] = ("adv",)
    weight: Weight = 1.0
    name: str = "max_ce"
    jacobian_views = ()
    reads_unlabeled_labels = True

    @property
    def views(self) -> tuple[str, ...]:
        return tuple(self.over)

    def __call__(self, views: Views) -> tuple[jax.Array, dict[str, Any]]:
        per_view = jnp.stack(
            [losses.cross_entropy(views.logits(v), views.labels) for v in self.views]
        )
        return jnp.mean(jnp.max(per_view, axis=0)), {}
