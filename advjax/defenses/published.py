"""Published defenses as compositions of terms, with their papers' defaults.

Each factory returns a ``Defense`` (``advjax.defenses.core``); ``x'`` is the adversary's view:

- ``natural``: ``CE(f(x), y)``.
- ``pgd_at`` (Madry et al. 2018): ``CE(f(x'), y)``; any attack (FGSM from a random start is fast
  AT, Wong et al. 2020; a spatial worst-of-k is Worst-of-k AT, Engstrom et al. 2019).
- ``trades`` (Zhang et al. 2019): ``CE(f(x), y) + beta KL(p(x) || p(x'))``; KL adversary.
- ``mart`` (Wang et al. 2020): ``BCE(f(x'), y) + beta KL(p(x) || p(x')) (1 - p_y(x))``; CE
  adversary (``variant="thesis"``: the thesis's Eq. 7, BCE on ``f(x)`` and a KL adversary).
- ``jac`` (zero-step JAC, Hoffman et al. 2019): ``CE(f(x), y) + alpha ||J(x)||_F^2``.
- ``atlas`` (ATLAS Eq. 14): ``CE(f(x'), y) + alpha ||J(x')||_F^2 + beta KL(p(x') || p(x))``;
  ``atlas_l`` / ``atlas_g`` (App. C, Eqs. 20-21) drop the KL / the Jacobian term.
- ``trades_jac`` (ATLAS App. D.1): ``CE(f(x), y) + alpha ||J(x)||_F^2 + beta KL(p(x) || p(x'))``.
- ``klr`` (Yang et al. 2019): TRADES with a spatial worst-of-10 KL adversary (SRT baseline).
- ``rt`` / ``srt`` (SRT Eq. 6, 9-11): ``mean_L CE(f(x), y) + lam mean CE(f(x'), C(x))`` over the
  labeled rows (RT) or every row (SRT), ``C(x)`` the predicted label.
- ``ave_at`` / ``max_at`` (Tramer & Boneh 2019; seed 001 Sec. 4.1): the average / per-example
  maximum CE over several adversaries.

``J(u) = d f(u) / d u`` is the Jacobian of the logits with respect to the [0, 1] input image;
``||J||_F^2`` is the random-projection estimate of Hoffman et al. (``defenses.jacobian``). A KL
adversary maximises the same KL as the loss against the clean inference-mode prediction, passed
as its target (``Adversary(target="clean_logits")``). Regularised objectives report ``jac_norm``,
the estimate of ``||J(x')||_F^2`` at the adversary (at ``x`` without one), the catastrophic-
overfitting monitor of ATLAS App. E, at the cost of one backward pass without gradient
(``monitor_jacobian=False`` turns it off). With ``scale_weights_with_eps`` (the ATLAS family) the
weights ``alpha`` and ``beta`` ramp with the attack budget during the epsilon warm-up.

Known differences from the reference code: PGD adversaries start from a uniform point of the ball
(TRADES's and MART's code start from ``x + 0.001 N(0, I)``; ATLAS App. B uses random starts); MART's
BCE has ``1e-12`` where MART's code has ``1.0001``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from advjax import attacks, losses
from advjax.attacks import Attack
from advjax.attacks.base import check_nonnegative
from advjax.defenses.core import CLEAN, Adversary, Defense, WarmupScaled, Weight, check_choice
from advjax.defenses.terms import (
    BoostedCrossEntropy,
    CrossEntropy,
    JacobianNorm,
    KLDivergence,
    MaxCrossEntropy,
    kl_attack_loss,
)

MART_VARIANTS = ("original", "thesis")


def _weight(value: float, scale_with_eps: bool) -> Weight:
    return WarmupScaled(value) if scale_with_eps else value


def _check_kl_attack(attack: Attack, kl_base: str) -> None:
    expected = kl_attack_loss(kl_base)
    loss = getattr(attack, "loss", None)
    if loss is not None and losses.get_loss(loss) is not losses.get_loss(expected):
        raise ValueError(
            f"a KL adversary with kl_base={kl_base!r}: the attack must maximise the same KL, "
            f"loss={expected!r}"
        )


def _monitor(view: str, num_projections: int, enabled: bool) -> tuple[JacobianNorm, ...]:
    return (JacobianNorm(view, num_projections, name="jac_norm"),) if enabled else ()


def natural(eps_warmup_steps: int = 0) -> Defense:
    """Standard training: cross-entropy on clean inputs. ``eps_warmup_steps`` changes nothing
    (there is no adversary); it is accepted so that one schedule override can state the
    warm-up of every run of a comparison (``launch.pareto_front --override=...``)."""
    return Defense((CrossEntropy(CLEAN, name="clean"),), (), (), eps_warmup_steps, name="natural")


def pgd_at(
    attack: Attack, eps_warmup_steps: int = 0, beta: float = 1.0, clean_weight: float = 0.0
) -> Defense:
    """Adversarial training (Madry et al. 2018): ``beta CE(f(x'), y)``, ``x' = attack(x)``, plus
    ``clean_weight CE(f(x), y)`` (the thesis's PGD-AT, Eq. 5, has ``clean_weight = 1``).

    With ``attacks.fgsm_rs`` (FGSM from a random start, step ``1.25 eps``) and a cyclic learning
    rate this is fast AT (Wong et al. 2020)."""
    terms: tuple[Any, ...] = (CrossEntropy("adv", weight=beta, name="adv"),)
    if clean_weight:
        terms = (CrossEntropy(CLEAN, weight=clean_weight, name="clean"), *terms)
    return Defense(terms, (Adversary(attack),), eps_warmup_steps=eps_warmup_steps, name="pgd_at")


def trades(
    attack: Attack,
    beta: float = 6.0,
    kl_base: str = "clean",
    eps_warmup_steps: int = 0,
    num_projections: int = 1,
    monitor_jacobian: bool = True,
    scale_weights_with_eps: bool = False,
) -> Defense:
    """TRADES (Zhang et al. 2019, Eq. 5): ``CE(f(x), y) + beta KL(p(x) || p(x'))``.

    ``attack`` maximises the same KL against the clean logits (``loss=kl_attack_loss(kl_base)``;
    PGD, or ``fgsm_rs`` for one-step TRADES as in ATLAS Sec. 6). ``kl_base="adv"`` gives
    ``KL(p(x') || p(x))`` (the thesis text's direction). ``beta = 6`` is the TRADES paper's
    CIFAR-10 value (1 on MNIST in ATLAS App. B).
    """
    return trades_jac(
        attack,
        alpha=0.0,
        beta=beta,
        kl_base=kl_base,
        eps_warmup_steps=eps_warmup_steps,
        num_projections=num_projections,
        monitor_jacobian=monitor_jacobian,
        scale_weights_with_eps=scale_weights_with_eps,
        name="trades",
    )


def trades_jac(
    attack: Attack,
    alpha: float = 2e-4,
    beta: float = 0.5,
    kl_base: str = "clean",
    eps_warmup_steps: int = 0,
    num_projections: int = 1,
    monitor_jacobian: bool = True,
    scale_weights_with_eps: bool = True,
    name: str = "trades_jac",
) -> Defense:
    """TradesJac (ATLAS App. D.1):
    ``CE(f(x), y) + alpha ||J(x)||_F^2 + beta KL(p(x) || p(x'))``, ``x'`` maximising the KL
    (``loss=kl_attack_loss(kl_base)``). Defaults: App. D.1 (CIFAR)."""
    _check_kl_attack(attack, kl_base)
    return _ce_jacobian_kl(
        CLEAN,
        Adversary(attack, target="clean_logits"),
        alpha,
        beta,
        kl_base,
        eps_warmup_steps,
        num_projections,
        monitor_jacobian,
        scale_weights_with_eps,
        name,
    )


def _ce_jacobian_kl(
    point: str,
    adversary: Adversary,
    alpha: float,
    beta: float,
    kl_base: str,
    eps_warmup_steps: int,
    num_projections: int,
    monitor_jacobian: bool,
    scale_weights_with_eps: bool,
    name: str,
) -> Defense:
    """``CE(f(u), y) + alpha ||J(u)||_F^2 + beta KL`` with ``u`` the clean input (TRADES,
    TradesJac) or the adversary (ATLAS); a zero weight drops its term, and ``jac_norm`` monitors
    ``||J(x')||_F^2``."""
    check_nonnegative(alpha=alpha, beta=beta)
    terms = [CrossEntropy(point, name="ce")]
    if alpha:
        terms.append(JacobianNorm(point, num_projections, _weight(alpha, scale_weights_with_eps)))
    if beta:
        terms.append(KLDivergence(base=kl_base, weight=_weight(beta, scale_weights_with_eps)))
    return Defense(
        tuple(terms),
        (adversary,),
        _monitor(adversary.name, num_projections, monitor_jacobian),
        eps_warmup_steps,
        name=name,
    )


def mart(
    attack: Attack,
    beta: float = 5.0,
    variant: str = "original",
    kl_base: str = "clean",
    eps_warmup_steps: int = 0,
    num_projections: int = 1,
    monitor_jacobian: bool = True,
) -> Defense:
    """MART (Wang et al. 2020, Eq. 8 and the official code).

    ``variant="original"``: ``BCE(f(x'), y) + beta KL(p(x) || p(x')) (1 - p_y(x))`` with ``x'``
    from a CE attack.
    ``variant="thesis"``: the thesis's Eq. 7 (spec P10), ``BCE(f(x), y) + beta (1 - p_y(x))
    KL(...)`` with the BCE on the *clean* output and ``x'`` maximising the KL
    (``loss=kl_attack_loss(kl_base)``).
    ``BCE(p, y) = -log p_y - log(1 - max_{k != y} p_k)``. ``beta = 5`` (MART, CIFAR-10).
    """
    check_choice("MART variant", variant, MART_VARIANTS)
    check_nonnegative(beta=beta)
    original = variant == "original"
    if not original:
        _check_kl_attack(attack, kl_base)
    terms = [BoostedCrossEntropy("adv" if original else CLEAN, name="ce")]
    if beta:
        terms.append(KLDivergence(base=kl_base, weighting="clean_misclassification", weight=beta))
    target = "labels" if original else "clean_logits"
    return Defense(
        tuple(terms),
        (Adversary(attack, target=target),),
        _monitor("adv", num_projections, monitor_jacobian),
        eps_warmup_steps,
        name="mart",
    )


def jac(alpha: float = 0.5, num_projections: int = 1, monitor_jacobian: bool = True) -> Defense:
    """Zero-step JAC (Hoffman et al. 2019; ATLAS Sec. 6): ``CE(f(x), y) + alpha ||J(x)||_F^2``.

    ``alpha = 0.5`` is ATLAS's ``alpha_JAC`` (App. B). Hoffman et al. write the penalty as
    ``lambda_JR / 2 ||J||_F^2``, so their ``lambda_JR`` is ``2 alpha`` here.
    """
    check_nonnegative(alpha=alpha)
    terms = [CrossEntropy(CLEAN, name="ce")]
    if alpha:
        terms.append(JacobianNorm(CLEAN, num_projections, alpha))
    return Defense(tuple(terms), (), _monitor(CLEAN, num_projections, monitor_jacobian), name="jac")


def atlas(
    attack: Attack,
    alpha: float = 2e-4,
    beta: float = 5.0,
    kl_base: str = "adv",
    eps_warmup_steps: int = 0,
    num_projections: int = 1,
    monitor_jacobian: bool = True,
    scale_weights_with_eps: bool = True,
    name: str = "atlas",
) -> Defense:
    """ATLAS (Eq. 14): ``CE(f(x'), y) + alpha ||J(x')||_F^approx + beta KL(p(x') || p(x))``.

    ``||J(x')||_F^approx`` estimates ``||J(x')||_F^2`` (Sec. 5.1). ``attack`` maximises CE
    (one-step: ``attacks.fgsm_rs(eps)``, FGSM from a random start with step ``1.25 eps``).
    During the epsilon warm-up ``alpha`` and ``beta`` are scaled by ``eps_t / eps`` (Sec. 5.3).
    Defaults: one-step CIFAR-10 values (App. B; MNIST: ``alpha = 1e-5``, ``beta = 0.3``).
    """
    return _ce_jacobian_kl(
        "adv",
        Adversary(attack),
        alpha,
        beta,
        kl_base,
        eps_warmup_steps,
        num_projections,
        monitor_jacobian,
        scale_weights_with_eps,
        name,
    )


def atlas_l(
    attack: Attack,
    alpha: float = 2e-4,
    eps_warmup_steps: int = 0,
    num_projections: int = 1,
    monitor_jacobian: bool = True,
    scale_weights_with_eps: bool = True,
) -> Defense:
    """ATLAS-l (App. C, Eq. 20): the local part, ``CE(f(x'), y) + alpha ||J(x')||_F^approx``."""
    return atlas(
        attack,
        alpha,
        0.0,
        "adv",
        eps_warmup_steps,
        num_projections,
        monitor_jacobian,
        scale_weights_with_eps,
        name="atlas_l",
    )


def atlas_g(
    attack: Attack,
    beta: float = 5.0,
    kl_base: str = "adv",
    eps_warmup_steps: int = 0,
    num_projections: int = 1,
    monitor_jacobian: bool = True,
    scale_weights_with_eps: bool = True,
) -> Defense:
    """ATLAS-g (App. C, Eq. 21): the global part, ``CE(f(x'), y) + beta KL(p(x') || p(x))``."""
    return atlas(
        attack,
        0.0,
        beta,
        kl_base,
        eps_warmup_steps,
        num_projections,
        monitor_jacobian,
        scale_weights_with_eps,
        name="atlas_g",
    )


def klr(
    attack: Attack | None = None,
    beta: float = 1.0,
    kl_base: str = "clean",
    eps_warmup_steps: int = 0,
    num_projections: int = 1,
    monitor_jacobian: bool = True,
) -> Defense:
    """KLR (Yang et al. 2019), the SRT document's spatial baseline: ``CE(f(x), y) + beta
    KL(p(x) || p(x'))`` with ``x'`` a spatial transform maximising the KL: TRADES with a spatial
    adversary. ``attack`` defaults to Worst-of-10 rotation-translations (``+-30`` degrees,
    ``+-3`` px) and ``beta`` to 1 (our choice; the document gives none)."""
    if attack is None:
        attack = attacks.worst_of_k(steps=10, loss=kl_attack_loss(kl_base))
    return trades(attack, beta, kl_base, eps_warmup_steps, num_projections, monitor_jacobian, False)


def rt(attack: Attack, lam: float = 1.0, eps_warmup_steps: int = 0) -> Defense:
    """Robust training (SRT document Eq. 6): SRT on the labeled examples only (the fixed-shape
    batch still runs the attack on unlabeled examples, whose terms are masked out)."""
    return _semi_supervised(attack, lam, eps_warmup_steps, robust_rows="labeled", name="rt")


def srt(attack: Attack, lam: float = 1.0, eps_warmup_steps: int = 0) -> Defense:
    """Semi-supervised robust training (SRT Eq. 9-11)::

        mean_{L} CE(f(x), y) + lam * mean_{L u U} CE(f(x'), C(x)),
        x' = argmax_{x' in N(x)} CE(f(x'), C(x))                                  (Eq. 10)

    ``C(x) = argmax f(x)`` is the inference-mode predicted label (Sec. 3.1). Batches carry a bool
    ``"labeled"`` mask (``advjax.data.with_labeled_subset``; absent means every example is
    labeled); the labels of unlabeled examples are never read, and means over the labeled rows
    are taken across the data-parallel batch. Pixel-wise experiments use ``lam = 1`` (App. E),
    spatial ones ``lam = 0.2`` (App. D). Fast SRT (App. J) is SRT with ``attacks.fgsm_rs`` and
    the cyclic learning rate."""
    return _semi_supervised(attack, lam, eps_warmup_steps, robust_rows="all", name="srt")


def _semi_supervised(
    attack: Attack, lam: float, eps_warmup_steps: int, robust_rows: str, name: str
) -> Defense:
    if not lam >= 0:
        raise ValueError(f"lam (lambda) must be >= 0, got {lam}")
    terms = (
        CrossEntropy(CLEAN, rows="labeled", name="clean"),
        CrossEntropy("adv", labels="predicted", rows=robust_rows, weight=lam, name="robust"),
    )
    return Defense(terms, (Adversary(attack, target="predicted"),), (), eps_warmup_steps, name=name)


def _adversaries(attacks_: Mapping[str, Attack]) -> tuple[Adversary, ...]:
    if not attacks_:
        raise ValueError("give at least one adversary: attacks={name: attack, ...}")
    return tuple(Adversary(attack, name=name) for name, attack in attacks_.items())


def ave_at(attacks: Mapping[str, Attack], eps_warmup_steps: int = 0) -> Defense:
    """Ave-AT (Tramer & Boneh 2019; seed 001 Sec. 4.1): ``(1/n) sum_a CE(f(x'_a), y)`` over the
    named adversaries ``attacks`` (e.g. PGD, flow and rotation-translation)."""
    adversaries = _adversaries(attacks)
    weight = 1.0 / len(adversaries)
    terms = tuple(CrossEntropy(a.name, weight=weight, name=f"{a.name}_ce") for a in adversaries)
    return Defense(terms, adversaries, (), eps_warmup_steps, name="ave_at")


def max_at(attacks: Mapping[str, Attack], eps_warmup_steps: int = 0) -> Defense:
    """Max-AT (Tramer & Boneh 2019; seed 001 Sec. 4.1): ``mean_i max_a CE(f(x'_{a,i}), y_i)``,
    the per-example strongest of the named adversaries ``attacks``."""
    adversaries = _adversaries(attacks)
    term = MaxCrossEntropy(tuple(a.name for a in adversaries), name="adv")
    return Defense((term,), adversaries, (), eps_warmup_steps, name="max_at")
