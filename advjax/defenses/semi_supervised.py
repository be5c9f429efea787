"""RT, SRT and fast SRT: standard risk on labeled data plus a robust risk on predicted labels.

SRT (semi-supervised robust training), Eq. 9 and 11 of the SRT document::

    (1/|D_L|) sum_{(x, y) in D_L} CE(f(x), y)
      + (lambda / |D'_L u D_U|) sum_{x in D'_L u D_U} CE(f(x'), C(x)),
    x' = argmax_{x' in N(x)} CE(f(x'), C(x))                                       (Eq. 10)

where ``C(x) = argmax f_w(x)`` is the current model's predicted label (Sec. 3.1), a constant for
the parameter gradient, and the neighborhood ``N(x)`` is that of any advjax attack (pixel Linf PGD
as in the pixel-wise experiments, FGSM from a random start for fast SRT (App. J, Alg. 2), or a
spatial worst-of-k attack: every attack follows ``attack(model_fn, variables, x, y, keys)``).
RT (Eq. 6) is the special case without unlabeled data: both terms over the labeled examples only.

Batches carry a bool ``"labeled"`` mask (``advjax.data.with_labeled_subset``; absent means every
example is labeled); the labels of unlabeled examples are never read. Per batch, the first term is
the mean over the batch's labeled examples and the second the mean over all of them (labeled only
for RT). Under the data-parallel train step the labeled count is summed over the ``batch`` mesh
axis, so the step is the same on any number of devices.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from advjax import attacks, losses
from advjax.attacks import Attack
from advjax.defenses.objectives import attack_from_defense_config, warmup_steps
from advjax.models import apply_train, make_model_fn

Batch = dict[str, jax.Array]

AXIS = "batch"  # the data-parallel mesh axis of advjax.train.step


def _global_count(local_count: jax.Array, axis_name: str | None) -> tuple[jax.Array, int]:
    """(count summed over the mapped ``axis_name``, number of devices on it); the local count and
    1 outside a mapped context (e.g. when the objective is called directly)."""
    if axis_name is None:
        return local_count, 1
    try:
        return jax.lax.psum(local_count, axis_name), jax.lax.psum(1, axis_name)
    except NameError:  # unbound axis: not inside shard_map/pmap
        return local_count, 1


def masked_mean(values: jax.Array, mask: jax.Array, axis_name: str | None = AXIS) -> jax.Array:
    """Mean of ``values`` over the examples where ``mask`` is set, across the data-parallel batch.

    Inside a step mapped over ``axis_name`` this returns ``local_sum * devices / global_count``,
    whose ``pmean`` over devices is the global masked mean (0 when no example is selected).
    """
    mask = mask.astype(values.dtype)
    count, devices = _global_count(jnp.sum(mask), axis_name)
    return jnp.sum(mask * values) * devices / jnp.maximum(count, 1.0)


@dataclasses.dataclass(frozen=True)
class SemiSupervisedRobust:
    """``mean_L CE(f(x), y) + lam * mean_{L u U} CE(f(x'), C(x))`` (SRT Eq. 11).

    Attributes:
      attack: solves the inner maximisation (Eq. 10), called with the predicted labels ``C(x)``
        as its labels; its output is a constant for the parameter gradient.
      lam: ``lambda``, the weight of the robust risk (Eq. 9).
      use_unlabeled: SRT (True, robust term over all examples) or RT (False, labeled only; the
        fixed-shape batch still runs the attack on unlabeled examples, whose terms are masked).
      eps_warmup_steps: linear ramp of the attack budget from 0 over this many steps (as
        ``CrossEntropyOn``).
      axis_name: the data-parallel axis whose devices share the batch (see ``masked_mean``).

    ``C(x)`` is the inference-mode prediction on the clean input (the classifier the attack sees).
    Both training-mode forward passes (on ``x`` and ``x'``) update the BatchNorm statistics, in
    that order; the clean pass runs on the whole fixed-shape batch (unlabeled examples included)
    and the mask selects the labeled losses.
    """

    attack: Attack
    lam: float = 1.0
    use_unlabeled: bool = True
    eps_warmup_steps: int = 0
    axis_name: str | None = AXIS

    # The training loop accepts datasets with unlabeled examples only for such defenses.
    supports_unlabeled = True

    def __post_init__(self):
        if not self.lam >= 0:
            raise ValueError(f"lam (lambda) must be >= 0, got {self.lam}")
        if int(self.eps_warmup_steps) != self.eps_warmup_steps or self.eps_warmup_steps < 0:
            raise ValueError(
                f"eps_warmup_steps must be an integer >= 0, got {self.eps_warmup_steps}"
            )

    @property
    def name(self) -> str:
        return "srt" if self.use_unlabeled else "rt"

    def at_step(self, step: jax.Array) -> SemiSupervisedRobust:
        """The objective at train step ``step`` (epsilon warm-up, ATLAS Sec. 4)."""
        if not self.eps_warmup_steps:
            return self
        ramp = jnp.minimum(1.0, step.astype(jnp.float32) / self.eps_warmup_steps)
        return dataclasses.replace(self, attack=self.attack.scaled(ramp))

    def __call__(self, model: nn.Module, variables: Any, batch: Batch, keys: jax.Array):
        x, y = batch["image"], batch["label"]
        labeled = batch.get("labeled")
        labeled = jnp.ones(y.shape, bool) if labeled is None else labeled.astype(bool)
        # Never read the label of an unlabeled example (it may be any placeholder).
        y = jnp.where(labeled, y, 0)
        model_fn = make_model_fn(model)
        predicted = jax.lax.stop_gradient(jnp.argmax(model_fn(variables, x), -1))  # C(x)
        x_adv = jax.lax.stop_gradient(self.attack(model_fn, variables, x, predicted, keys))

        logits, batch_stats = apply_train(model, variables, x)
        if batch_stats:
            variables = {**variables, "batch_stats": batch_stats}
        adv_logits, batch_stats = apply_train(model, variables, x_adv)

        robust_mask = jnp.ones_like(labeled) if self.use_unlabeled else labeled
        clean_ce = losses.cross_entropy(logits, y)
        robust_ce = losses.cross_entropy(adv_logits, predicted)
        clean_loss = masked_mean(clean_ce, labeled, self.axis_name)
        robust_loss = masked_mean(robust_ce, robust_mask, self.axis_name)
        loss = clean_loss + self.lam * robust_loss

        def mean_over(values, mask):
            return masked_mean(values.astype(jnp.float32), mask, self.axis_name)

        adv_pred = jnp.argmax(adv_logits, -1)
        metrics = {
            "clean_loss": clean_loss,
            "robust_loss": robust_loss,
            # On the labeled examples, against the true labels.
            "clean_accuracy": mean_over(jnp.argmax(logits, -1) == y, labeled),
            "adv_accuracy": mean_over(adv_pred == y, labeled),
            # Prediction kept under attack (1 - the robust risk's 0/1 loss, Eq. 4).
            "robust_consistency": mean_over(adv_pred == predicted, robust_mask),
            "labeled_fraction": jnp.mean(labeled.astype(jnp.float32)),
        }
        return loss, {"batch_stats": batch_stats, "metrics": metrics}


def srt(attack: Attack, lam: float = 1.0, eps_warmup_steps: int = 0) -> SemiSupervisedRobust:
    """Semi-supervised robust training (SRT Eq. 9-11): labeled CE + ``lam`` x robust CE on the
    predicted labels of labeled and unlabeled examples. Pixel-wise experiments use ``lam = 1``
    (App. E), spatial ones ``lam = 0.2`` (App. D)."""
    return SemiSupervisedRobust(attack, lam, True, eps_warmup_steps)


def rt(attack: Attack, lam: float = 1.0, eps_warmup_steps: int = 0) -> SemiSupervisedRobust:
    """Robust training (SRT document Eq. 6): SRT on labeled examples only."""
    return SemiSupervisedRobust(attack, lam, False, eps_warmup_steps)


def fast_srt(
    eps: float,
    lam: float = 1.0,
    step_size: float | None = None,
    norm: str = "linf",
    eps_warmup_steps: int = 0,
) -> SemiSupervisedRobust:
    """Fast SRT (SRT App. J): the inner maximisation by FGSM from a uniform random start with step
    ``1.25 eps`` (Alg. 2). Train it with the cyclic learning rate (``train.schedule = "cyclic"``),
    the other half of fast SRT."""
    return srt(attacks.fgsm_rs(eps, step_size=step_size, norm=norm), lam, eps_warmup_steps)


# -- config builders: ``DEFENSES[name] = builder`` in ``advjax.defenses`` -------------------------


def rt_from_config(cfg, steps_per_epoch: int) -> SemiSupervisedRobust:
    """``name="rt"``: ``lam`` (default 1) and the attack of ``attack_from_defense_config``."""
    return rt(
        attack_from_defense_config(cfg), cfg.get("lam", 1.0), warmup_steps(cfg, steps_per_epoch)
    )


def srt_from_config(cfg, steps_per_epoch: int) -> SemiSupervisedRobust:
    """``name="srt"``: as ``rt_from_config``, the robust term also over unlabeled examples."""
    return srt(
        attack_from_defense_config(cfg), cfg.get("lam", 1.0), warmup_steps(cfg, steps_per_epoch)
    )


def fast_srt_from_config(cfg, steps_per_epoch: int) -> SemiSupervisedRobust:
    """``name="fast_srt"``: ``eps``, ``step_size`` (default 1.25 eps), ``norm``, ``lam``."""
    return fast_srt(
        cfg.eps,
        cfg.get("lam", 1.0),
        step_size=cfg.get("step_size", None),
        norm=cfg.get("norm", "linf"),
        eps_warmup_steps=warmup_steps(cfg, steps_per_epoch),
    )


BUILDERS = {"rt": rt_from_config, "srt": srt_from_config, "fast_srt": fast_srt_from_config}
