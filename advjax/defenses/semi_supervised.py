"""The semi-supervised baselines of SRT Table 4: UAT (Uesato et al. 2019) and RST (Carmon et al.
2019), as compositions of terms.

Both learn from unlabeled data. UAT-OT reads batches with a ``labeled`` mask, as SRT does (the
labels of unlabeled rows are never read). UAT-FT, UAT++ and RST train on pseudo-labels: the
unlabeled pool is labelled once, before training, by a standard model trained on the labeled
examples (``advjax.data.pseudo_labels``; in a config, ``data.pseudo_labels_from=WORKDIR``), and
their batches carry a label on every row. ``x'`` is an adversary's view, ``y`` the label (true on
labeled rows, the teacher's on pseudo-labeled ones), ``p_hat(x)`` the clean prediction of the
current model held fixed (inference mode, no gradient: UAT's copy ``theta_hat``):

- ``uat`` (Uesato et al. 2019, Sec. 4.1), ``variant``:
  ``"ot"`` (online targets): ``mean_L CE(f(x), y) + beta mean KL(p_hat(x) || p(x'))``, ``x'``
  maximising the KL, on every row (labeled and unlabeled);
  ``"ft"`` (fixed targets): ``mean CE(f(x'), y)``, adversarial training on the pseudo-labels;
  ``"plus_plus"`` (UAT++, the paper's best and the default): the sum of the two unlabeled losses,
  ``mean CE(f(x'), y) + beta mean KL(p_hat(x) || p(x''))``, each with its own adversary (``x'``
  maximises the CE, ``x''`` the KL).
- ``rst`` (Carmon et al. 2019, Sec. 4, RST-TRADES): TRADES, ``mean CE(f(x), y) + beta
  mean KL(p(x) || p(x'))``, on the labeled and pseudo-labeled rows. RST sets the weight of the
  pseudo-labeled rows by their fraction of each batch (its code's ``unsup_fraction``, 0.5): that
  is a data option here, ``data.unlabeled_fraction`` (``pipeline.train_batches``); without it
  batches mix the two in proportion to their sizes (SRT Sec. 4).

Which UAT the SRT document ran: its Table 4 names "UAT" and App. E tunes one weight, beta ("set to
6, as suggested in the paper", lowered to 1 on CIFAR-10), so the smoothness (OT) term is in it;
UAT++ is the variant Uesato et al. report as UAT's state of the art, hence the default here. Our
choices where the sources are silent: UAT-OT's supervised term is the clean CE on the labeled rows
(TRADES's form); ``detach_target=False`` lets the gradient through ``p(x)`` (TRADES's KL, on the
clean training-mode pass) instead of holding the target fixed.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from advjax.attacks import Attack
from advjax.attacks.base import check_nonnegative
from advjax.defenses.core import CLEAN, Adversary, Defense, Views, Weight, check_choice
from advjax.defenses.published import trades
from advjax.defenses.terms import CrossEntropy, kl_attack_loss, kl_term

UAT_VARIANTS = ("plus_plus", "ot", "ft")


@dataclasses.dataclass(frozen=True)
class OnlineTargetKL:
    """``mean_i KL(p_hat(x_i) || p(x'_i))`` over every row: UAT-OT's smoothness loss.

    ``p_hat(x)`` is the current model's clean prediction held fixed: the inference-mode clean
    logits the KL adversary maximised against, without gradient (``detach=True``), or the clean
    training-mode pass with its gradient (``detach=False``: TRADES's KL term). No label is read.
    """

    adv: str = "adv"
    detach: bool = True
    weight: Weight = 1.0
    name: str = "ot"
    jacobian_views = ()
    reads_unlabeled_labels = False

    @property
    def views(self) -> tuple[str, ...]:
        return (self.adv,) if self.detach else (CLEAN, self.adv)

    def __call__(self, views: Views) -> tuple[jax.Array, dict[str, jax.Array]]:
        target = views.clean_inference_logits() if self.detach else views.logits(CLEAN)
        return jnp.mean(kl_term(target, views.logits(self.adv), "clean")), {}


def _kl_adversary(attack: Attack) -> Attack:
    """``attack`` maximising ``KL(p_hat(x) || p(x'))`` against the clean logits."""
    if not (dataclasses.is_dataclass(attack) and hasattr(attack, "loss")):
        raise ValueError(
            f"UAT's online targets need an attack maximising the KL; {type(attack).__name__} has "
            "no loss to set: give kl_attack=<an attack with a loss, e.g. pgd>"
        )
    return dataclasses.replace(attack, loss=kl_attack_loss("clean"))


def uat(
    attack: Attack,
    beta: float = 6.0,
    variant: str = "plus_plus",
    kl_attack: Attack | None = None,
    detach_target: bool = True,
    eps_warmup_steps: int = 0,
) -> Defense:
    """Unsupervised adversarial training (Uesato et al. 2019, Sec. 4.1; see the module docstring).

    ``attack`` is the fixed-target adversary (it maximises the CE on ``y``); the online-target one
    is ``kl_attack`` (default: ``attack``) with its loss set to ``KL(p_hat(x) || p(x'))``, run
    against the clean inference-mode logits. ``beta`` weighs the smoothness term; 6 is the value
    the SRT document quotes from the paper (App. E; it used 1 on CIFAR-10).

    ``"ot"`` trains on batches with unlabeled rows (their labels are never read); ``"ft"`` and
    ``"plus_plus"`` read a label on every row, so they train on pseudo-labeled data
    (``data.pseudo_labels_from``).
    """
    check_choice("UAT variant", variant, UAT_VARIANTS)
    check_nonnegative(beta=beta)
    terms: list = []
    adversaries: list[Adversary] = []
    if variant == "ot":
        terms.append(CrossEntropy(CLEAN, rows="labeled", name="clean"))
    else:
        terms.append(CrossEntropy("adv", name="ft"))
        adversaries.append(Adversary(attack))
    if variant != "ft" and beta:
        view = "adv" if variant == "ot" else "kl_adv"
        kl = _kl_adversary(attack if kl_attack is None else kl_attack)
        adversaries.append(Adversary(kl, name=view, target="clean_logits"))
        terms.append(OnlineTargetKL(view, detach_target, weight=beta, name="ot"))
    return Defense(tuple(terms), tuple(adversaries), (), eps_warmup_steps, name="uat")


def rst(
    attack: Attack,
    beta: float = 6.0,
    kl_base: str = "clean",
    eps_warmup_steps: int = 0,
    num_projections: int = 1,
    monitor_jacobian: bool = True,
) -> Defense:
    """Robust self-training (Carmon et al. 2019, Sec. 4; RST-TRADES): TRADES,
    ``mean CE(f(x), y) + beta mean KL(p(x) || p(x'))`` with ``x'`` maximising the KL
    (``loss=kl_attack_loss(kl_base)``), on the labeled and the pseudo-labeled rows.

    ``beta = 6`` is RST's (CIFAR-10; the SRT document uses TRADES's 1 on MNIST). The teacher and
    the fraction of pseudo-labeled rows per batch are data options (module docstring).
    """
    base = trades(attack, beta, kl_base, eps_warmup_steps, num_projections, monitor_jacobian)
    return dataclasses.replace(base, name="rst")
