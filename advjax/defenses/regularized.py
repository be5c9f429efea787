"""Regularised training objectives: TRADES, MART, zero-step JAC, ATLAS (-l, -g) and TradesJac.

Each is one ``Regularized`` objective (the defense contract of ``objectives.py``)::

    loss, aux = defense(model, variables, batch, keys)

    loss = mean_i [ CE-term(z_i)                                      (CE or MART's BCE)
                    + alpha_t * ||J(u_i)||_F^2 estimate               (Jacobian penalty)
                    + beta_t * w_i * KL-term(p(x_i), p(x'_i)) ]       (KL consistency)

where ``z`` and ``u`` are the clean ``x`` or the adversary ``x'`` (per objective), ``w_i`` is 1 or
MART's ``1 - p_y(x_i)``, and ``alpha_t = alpha * eps_t / eps`` and ``beta_t`` likewise during the
epsilon warm-up for the ATLAS family (ATLAS Sec. 5.3). The objectives:

- ``trades`` (Zhang et al. 2019): ``CE(f(x), y) + beta KL(p(x) || p(x'))``; KL adversary.
- ``mart`` (Wang et al. 2020): ``BCE(f(x'), y) + beta KL(p(x) || p(x')) (1 - p_y(x))``; CE
  adversary (``variant="thesis"``: the thesis's Eq. 7, BCE on ``f(x)`` and a KL adversary).
- ``jac`` (zero-step JAC, Hoffman et al. 2019): ``CE(f(x), y) + alpha ||J(x)||_F^2``; no adversary.
- ``atlas`` (ATLAS Eq. 14): ``CE(f(x'), y) + alpha ||J(x')||_F^2 + beta KL(p(x') || p(x))``; CE
  adversary.
- ``atlas_l`` / ``atlas_g`` (ATLAS App. C, Eqs. 20-21): ATLAS with ``beta = 0`` / ``alpha = 0``.
- ``trades_jac`` (ATLAS App. D.1): ``CE(f(x), y) + alpha ||J(x)||_F^2 + beta KL(p(x) || p(x'))``;
  KL adversary.

``J(u) = d f(u) / d u`` is the Jacobian of the logits with respect to the [0, 1] input image
(``K x D``); ATLAS's ``||J(x')||_F^approx`` is "a cheap approximation of ``||J(x')||_F^2``" (Sec.
5.1), the random-projection estimate of Hoffman et al. (2019), ``jacobian_norm_estimate``.

The adversary runs on the model in inference mode with the current parameters and is a constant
for the parameter gradient (as in ``CrossEntropyOn``). A KL adversary maximises the same KL as the
loss (``kl_base``) against the clean prediction ``f(x)`` (inference mode, a stop-gradient
constant), passed to the attack as its target (``advjax.losses.kl_from_reference`` /
``kl_to_reference``). One-step adversaries are FGSM from a uniform random start with step
``1.25 eps`` (``attacks.fgsm_rs``, ATLAS Sec. 6), multi-step ones PGD (``attacks.pgd``).

BatchNorm. The loss terms are computed in training mode (``apply_train``): one pass on the clean
batch when a term needs ``f(x)``, then one on the adversarial batch when a term needs ``f(x')``,
each normalised with its own batch statistics (as two PyTorch forward passes in ``model.train()``
would be). The running statistics are chained through the passes in that order (clean, then
adversarial): the returned ``batch_stats`` have received one momentum update per pass. Objectives
that need only ``f(x')`` (ATLAS-l) make only the adversarial pass, so ATLAS with
``alpha = beta = 0`` updates the statistics exactly as one-step ADV (``fast_at``) does; those that
need only ``f(x)`` (zero-step JAC) make only the clean pass. The
Jacobian penalty differentiates the training-mode pass it shares (no extra forward pass); with
BatchNorm in training mode an example's logits also depend (through the batch statistics, weakly)
on the other examples, which the one-VJP estimate includes, as PyTorch implementations do.

Metrics (``aux["metrics"]``): ``ce_loss`` (the CE or BCE term), ``kl_loss`` (the unweighted mean
KL), ``jac_loss`` (the mean penalised Jacobian estimate), ``jac_norm`` (the estimate of
``||J(x')||_F^2`` at the adversary, ATLAS's catastrophic-overfitting monitor, App. E; at ``x`` for
zero-step JAC), ``clean_accuracy`` and ``adv_accuracy`` (training-mode passes), and the current
``alpha`` and ``beta``. For objectives that do not penalise ``J(x')`` the monitor costs one extra
backward pass without gradient (``monitor_jacobian=False`` turns it off).

Known differences from the reference code: PGD adversaries start from a uniform point of the ball
(TRADES's and MART's code start from ``x + 0.001 N(0, I)``; ATLAS App. B uses random starts); MART's
BCE is ``losses.boosted_cross_entropy`` (``-log(1 - max_{k != y} p_k + 1e-12)`` where MART's code
has ``-log(1.0001 - ...)``).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from advjax import attacks, losses
from advjax.attacks import Attack
from advjax.attacks.base import check_nonnegative
from advjax.defenses.objectives import (
    attack_from_defense_config,
    pgd_from_config,
    warmup_steps,
)
from advjax.models import apply_train, make_model_fn

Batch = dict[str, jax.Array]

KL_BASES = ("clean", "adv")
POINTS = ("clean", "adv")
ATTACK_TARGETS = ("labels", "clean_logits")
CE_LOSSES = ("ce", "boosted_ce")
KL_WEIGHTS = ("none", "clean_misclassification")
MART_VARIANTS = ("original", "thesis")

# Fold-in constants deriving the per-example projection keys from the defense's example keys.
_JACOBIAN_KEY = 1


def _check_choice(name: str, value: str, valid: tuple[str, ...]) -> None:
    if value not in valid:
        raise ValueError(f"unknown {name} {value!r}; valid values: {', '.join(valid)}")


def kl_term(clean_logits: jax.Array, adv_logits: jax.Array, kl_base: str = "clean") -> jax.Array:
    """Per-example KL between the clean and adversarial predictions, ``[B]``.

    ``kl_base="clean"``: ``KL(p(x) || p(x'))``, the clean prediction is the base distribution
    (original TRADES and MART code: ``KLDivLoss(log_softmax(f(x')), softmax(f(x)))``).
    ``kl_base="adv"``: ``KL(p(x') || p(x))`` (ATLAS Eq. 13-14; the thesis text's TRADES).
    """
    _check_choice("kl_base", kl_base, KL_BASES)
    if kl_base == "clean":
        return losses.kl_from_reference(adv_logits, clean_logits)
    return losses.kl_to_reference(adv_logits, clean_logits)


def kl_attack_loss(kl_base: str = "clean") -> str:
    """The ``advjax.losses`` name an attack maximises for ``kl_term(., ., kl_base)`` when its
    target is the clean logits: ``kl_from_reference`` (``"clean"``) or ``kl_to_reference``."""
    _check_choice("kl_base", kl_base, KL_BASES)
    return "kl_from_reference" if kl_base == "clean" else "kl_to_reference"


def projection_vectors(
    keys: jax.Array, num_classes: int, num_projections: int = 1, dtype: Any = jnp.float32
) -> jax.Array:
    """Per-example random unit vectors, uniform on the sphere ``S^{K-1}``: ``[P, B, K]``.

    ``keys`` is ``[B]`` (one key per example); each example's vectors depend on its key only.
    """

    def draw(key):
        v = jax.random.normal(key, (num_projections, num_classes))
        return v / jnp.linalg.norm(v, axis=-1, keepdims=True)

    return jax.vmap(draw, out_axes=1)(keys).astype(dtype)


def _estimate_from_vjp(
    vjp_fn: Any, num_classes: int, keys: jax.Array, num_projections: int, dtype: Any
) -> jax.Array:
    """``K * mean_p ||v_p^T J||^2`` per example, one VJP (backward pass) per projection."""
    vectors = projection_vectors(keys, num_classes, num_projections, dtype)

    def one(v):  # v: [B, K] -> [B]
        (g,) = vjp_fn(v)
        return num_classes * jnp.sum(jnp.square(g).reshape(g.shape[0], -1), axis=-1)

    if num_projections == 1:
        return one(vectors[0])
    return jnp.mean(jax.vmap(one)(vectors), axis=0)


def _example_keys(key: jax.Array, batch_size: int) -> jax.Array:
    if key.ndim == 0:
        return jax.random.split(key, batch_size)
    if key.shape != (batch_size,):
        raise ValueError(f"expected one key or {batch_size} per-example keys, got {key.shape}")
    return key


def jacobian_norm_estimate(
    logits_fn: Any, x: jax.Array, key: jax.Array, num_projections: int = 1
) -> jax.Array:
    """Unbiased random-projection estimate of ``||J_i||_F^2``, ``J_i = d logits_i / d x_i``.

    Hoffman, Roberts & Yaida (2019), "Robust learning with Jacobian regularization", Sec. 2-3:
    with ``v`` uniform on the unit sphere of the output space (dimension ``K``),
    ``E_v[||v^T J||^2] = ||J||_F^2 / K``, so ``K * ||v^T J||^2`` is unbiased. ``v^T J`` for every
    example at once is one vector-Jacobian product with the cotangent ``[v_1; ...; v_B]``: one
    backward pass per projection, whatever ``K`` (``jax.jacrev`` would need ``K``).

    Args:
      logits_fn: ``x -> logits [B, K]`` (e.g. ``lambda x: model_fn(variables, x)``), with examples
        independent of each other (otherwise the estimate includes cross-example terms).
      x: the input batch ``[B, ...]``.
      key: one PRNG key, or one key per example ``[B]`` (an example's estimate then depends on its
        own key and input only).
      num_projections: number of random vectors averaged per example (Hoffman et al. use 1).

    Returns:
      ``[B]``: the estimates. (Hoffman et al.'s reference code returns half their batch mean.)
    """
    if int(num_projections) != num_projections or num_projections < 1:
        raise ValueError(f"num_projections must be a positive integer, got {num_projections}")
    logits, vjp_fn = jax.vjp(logits_fn, x)
    keys = _example_keys(key, logits.shape[0])
    return _estimate_from_vjp(vjp_fn, logits.shape[-1], keys, int(num_projections), logits.dtype)


class _Pass:
    """One training-mode forward pass: logits, new BatchNorm statistics, and (when a Jacobian is
    needed) its VJP, so that the Jacobian estimate shares the forward pass."""

    def __init__(self, model: nn.Module, variables: Any, x: jax.Array, with_vjp: bool):
        def forward(z):
            return apply_train(model, variables, z)

        if with_vjp:
            self.logits, self.vjp_fn, self.batch_stats = jax.vjp(forward, x, has_aux=True)
        else:
            (self.logits, self.batch_stats), self.vjp_fn = forward(x), None

    def jacobian(self, keys: jax.Array, num_projections: int) -> jax.Array:
        k = self.logits.shape[-1]
        return _estimate_from_vjp(self.vjp_fn, k, keys, num_projections, self.logits.dtype)


@dataclasses.dataclass(frozen=True)
class Regularized:
    """``mean_i CE_term + alpha_t * Jacobian term + beta_t * w_i * KL term`` (see the module doc).

    Attributes:
      attack: the adversary producing ``x'`` (None: no adversary, only clean terms).
      alpha: weight of the Jacobian penalty ``||J(u)||_F^2`` (0 skips its computation).
      beta: weight of the KL term (0 skips it, and the clean pass if nothing else needs it).
      ce_on: where the CE term is evaluated, ``"clean"`` (``x``) or ``"adv"`` (``x'``).
      ce_loss: ``"ce"`` or MART's boosted CE ``"boosted_ce"`` (``losses.boosted_cross_entropy``).
      jac_on: where the Jacobian penalty is evaluated, ``"clean"`` or ``"adv"``.
      kl_base: base distribution of the KL (``kl_term``): ``"clean"`` = ``KL(p(x) || p(x'))``,
        ``"adv"`` = ``KL(p(x') || p(x))``.
      kl_weight: ``"none"`` or MART's per-example ``1 - p_y(x)`` (``"clean_misclassification"``,
        not detached, as in MART's code).
      attack_target: what the attack gets as ``y``: ``"labels"``, or ``"clean_logits"`` (the
        inference-mode ``f(x)``, for an attack maximising the KL ``kl_attack_loss(kl_base)``).
      num_projections: random projections per example of the Jacobian estimate.
      eps_warmup_steps: the attack budget ramps linearly from 0 over this many steps.
      scale_weights_with_eps: also scale ``alpha`` and ``beta`` by ``eps_t / eps`` during the
        warm-up (ATLAS Sec. 5.3).
      monitor_jacobian: report ``jac_norm`` at ``x'`` even when ``x'`` is not penalised (one
        extra backward pass, no gradient).
      weight_scale: the current ``eps_t / eps`` factor on ``alpha`` and ``beta`` (set by
        ``at_step``; may be traced).
    """

    attack: Attack | None
    alpha: float = 0.0
    beta: float = 0.0
    ce_on: str = "adv"
    ce_loss: str = "ce"
    jac_on: str = "adv"
    kl_base: str = "clean"
    kl_weight: str = "none"
    attack_target: str = "labels"
    num_projections: int = 1
    eps_warmup_steps: int = 0
    scale_weights_with_eps: bool = False
    monitor_jacobian: bool = True
    weight_scale: Any = 1.0

    def __post_init__(self):
        check_nonnegative(alpha=self.alpha, beta=self.beta, eps_warmup_steps=self.eps_warmup_steps)
        _check_choice("ce_on", self.ce_on, POINTS)
        _check_choice("ce_loss", self.ce_loss, CE_LOSSES)
        _check_choice("jac_on", self.jac_on, POINTS)
        _check_choice("kl_base", self.kl_base, KL_BASES)
        _check_choice("kl_weight", self.kl_weight, KL_WEIGHTS)
        _check_choice("attack_target", self.attack_target, ATTACK_TARGETS)
        if int(self.num_projections) != self.num_projections or self.num_projections < 1:
            raise ValueError(
                f"num_projections must be a positive integer, got {self.num_projections}"
            )
        if self.attack is None:
            if self.ce_on == "adv" or (self.alpha and self.jac_on == "adv") or self.beta:
                raise ValueError(
                    "without an attack there is no adversary x': use ce_on='clean', "
                    "jac_on='clean' and beta=0"
                )
            return
        attack_loss = getattr(self.attack, "loss", None)
        if attack_loss is None:
            return
        attack_loss = losses.get_loss(attack_loss)
        kl_losses = (losses.kl_from_reference, losses.kl_to_reference)
        if self.attack_target == "clean_logits":
            expected = kl_attack_loss(self.kl_base)
            if attack_loss is not losses.get_loss(expected):
                raise ValueError(
                    f"attack_target='clean_logits' with kl_base={self.kl_base!r}: the attack "
                    f"must maximise the same KL, loss={expected!r}"
                )
        elif attack_loss in kl_losses:
            raise ValueError(
                "a KL attack needs the clean logits as its target: use attack_target='clean_logits'"
            )

    def at_step(self, step: jax.Array) -> Regularized:
        """The objective at train step ``step``: the attack budget ramps linearly from 0 to its
        full value over ``eps_warmup_steps`` (ATLAS Sec. 4), and with ``scale_weights_with_eps``
        ``alpha`` and ``beta`` are multiplied by the same ``eps_t / eps`` (ATLAS Sec. 5.3)."""
        if self.attack is None or not self.eps_warmup_steps:
            return self
        ramp = jnp.minimum(1.0, jnp.asarray(step).astype(jnp.float32) / self.eps_warmup_steps)
        scale = ramp if self.scale_weights_with_eps else self.weight_scale
        return dataclasses.replace(self, attack=self.attack.scaled(ramp), weight_scale=scale)

    def _needs(self) -> tuple[bool, bool]:
        uses_kl = bool(self.beta)
        clean = (
            self.ce_on == "clean"
            or (bool(self.alpha) and self.jac_on == "clean")
            or uses_kl
            or self.attack is None
        )
        adv = self.attack is not None and (
            self.ce_on == "adv"
            or (bool(self.alpha) and self.jac_on == "adv")
            or uses_kl
            or self.monitor_jacobian
        )
        return clean, adv

    def __call__(self, model: nn.Module, variables: Any, batch: Batch, keys: jax.Array):
        x, y = batch["image"], batch["label"]
        model_fn = make_model_fn(model)
        alpha = self.alpha * self.weight_scale
        beta = self.beta * self.weight_scale
        jac_keys = jax.vmap(jax.random.fold_in, (0, None))(keys, _JACOBIAN_KEY)
        need_clean, need_adv = self._needs()
        penalise_clean = bool(self.alpha) and self.jac_on == "clean"
        penalise_adv = bool(self.alpha) and self.jac_on == "adv"

        x_adv = None
        if self.attack is not None:
            target = y
            if self.attack_target == "clean_logits":
                target = jax.lax.stop_gradient(model_fn(variables, x))
            x_adv = jax.lax.stop_gradient(self.attack(model_fn, variables, x, target, keys))

        metrics: dict[str, jax.Array] = {}
        batch_stats: Any = {}
        clean = adv = None
        if need_clean:
            with_vjp = penalise_clean or (self.attack is None and self.monitor_jacobian)
            clean = _Pass(model, variables, x, with_vjp)
            batch_stats = clean.batch_stats
            metrics["clean_accuracy"] = jnp.mean(jnp.argmax(clean.logits, -1) == y)
        if need_adv:
            adv_variables = variables
            if batch_stats:  # chain the running statistics: clean pass, then adversarial pass
                adv_variables = {**variables, "batch_stats": batch_stats}
            adv = _Pass(model, adv_variables, x_adv, penalise_adv or self.monitor_jacobian)
            batch_stats = adv.batch_stats
            metrics["adv_accuracy"] = jnp.mean(jnp.argmax(adv.logits, -1) == y)

        ce_fn = losses.cross_entropy if self.ce_loss == "ce" else losses.boosted_cross_entropy
        ce_logits = clean.logits if self.ce_on == "clean" else adv.logits
        loss = jnp.mean(ce_fn(ce_logits, y))
        metrics["ce_loss"] = loss

        if self.alpha:
            jac = (clean if self.jac_on == "clean" else adv).jacobian(
                jac_keys, self.num_projections
            )
            jac_loss = jnp.mean(jac)
            loss = loss + alpha * jac_loss
            metrics["jac_loss"] = jac_loss
        if self.monitor_jacobian:
            point = clean if self.attack is None else adv
            if self.alpha and (point is clean) == (self.jac_on == "clean"):
                metrics["jac_norm"] = jax.lax.stop_gradient(metrics["jac_loss"])
            else:
                metrics["jac_norm"] = jax.lax.stop_gradient(
                    jnp.mean(point.jacobian(jac_keys, self.num_projections))
                )

        if self.beta:
            kl = kl_term(clean.logits, adv.logits, self.kl_base)
            metrics["kl_loss"] = jnp.mean(kl)
            if self.kl_weight == "clean_misclassification":
                p_true = jnp.take_along_axis(
                    jax.nn.softmax(clean.logits, -1), y[:, None].astype(jnp.int32), -1
                )[:, 0]
                kl = kl * (1.0 - p_true)
            loss = loss + beta * jnp.mean(kl)

        metrics["alpha"] = jnp.asarray(alpha, jnp.float32)
        metrics["beta"] = jnp.asarray(beta, jnp.float32)
        return loss, {"batch_stats": batch_stats, "metrics": metrics}


# ----------------------------------------------------------------------------------------------
# Factories with the published defaults.


def trades(
    attack: Attack,
    beta: float = 6.0,
    kl_base: str = "clean",
    eps_warmup_steps: int = 0,
    **kwargs: Any,
) -> Regularized:
    """TRADES (Zhang et al. 2019, Eq. 5): ``CE(f(x), y) + beta KL(p(x) || p(x'))``.

    ``attack`` must maximise the same KL against the clean logits: build it with
    ``loss=kl_attack_loss(kl_base)`` (PGD, or ``fgsm_rs`` for one-step TRADES as in ATLAS Sec. 6).
    ``kl_base="adv"`` gives ``KL(p(x') || p(x))`` (the thesis text's direction). ``beta = 6`` is
    the TRADES paper's CIFAR-10 value (1 on MNIST in ATLAS App. B).
    """
    return Regularized(
        attack,
        beta=beta,
        ce_on="clean",
        kl_base=kl_base,
        attack_target="clean_logits",
        eps_warmup_steps=eps_warmup_steps,
        **kwargs,
    )


def mart(
    attack: Attack,
    beta: float = 5.0,
    variant: str = "original",
    kl_base: str = "clean",
    eps_warmup_steps: int = 0,
    **kwargs: Any,
) -> Regularized:
    """MART (Wang et al. 2020, Eq. 8 and the official code).

    ``variant="original"``: ``BCE(f(x'), y) + beta KL(p(x) || p(x')) (1 - p_y(x))`` with ``x'``
    from a CE attack (build ``attack`` with ``loss="ce"``).
    ``variant="thesis"``: the thesis's Eq. 7 (spec P10), ``BCE(f(x), y) + beta (1 - p_y(x))
    KL(...)`` with the BCE on the *clean* output and ``x'`` maximising the KL (build ``attack``
    with ``loss=kl_attack_loss(kl_base)``).
    ``BCE(p, y) = -log p_y - log(1 - max_{k != y} p_k)``. ``beta = 5`` (MART, CIFAR-10).
    """
    _check_choice("MART variant", variant, MART_VARIANTS)
    original = variant == "original"
    return Regularized(
        attack,
        beta=beta,
        ce_on="adv" if original else "clean",
        ce_loss="boosted_ce",
        kl_base=kl_base,
        kl_weight="clean_misclassification",
        attack_target="labels" if original else "clean_logits",
        eps_warmup_steps=eps_warmup_steps,
        **kwargs,
    )


def jac(alpha: float = 0.5, num_projections: int = 1, **kwargs: Any) -> Regularized:
    """Zero-step JAC (Hoffman et al. 2019; ATLAS Sec. 6): ``CE(f(x), y) + alpha ||J(x)||_F^2``.

    ``alpha = 0.5`` is ATLAS's ``alpha_JAC`` (App. B). Hoffman et al. write the penalty as
    ``lambda_JR / 2 ||J||_F^2``, so their ``lambda_JR`` is ``2 alpha`` here.
    """
    return Regularized(
        None,
        alpha=alpha,
        ce_on="clean",
        jac_on="clean",
        num_projections=num_projections,
        **kwargs,
    )


def atlas(
    attack: Attack,
    alpha: float = 2e-4,
    beta: float = 5.0,
    eps_warmup_steps: int = 0,
    kl_base: str = "adv",
    **kwargs: Any,
) -> Regularized:
    """ATLAS (Eq. 14): ``CE(f(x'), y) + alpha ||J(x')||_F^approx + beta KL(p(x') || p(x))``.

    ``||J(x')||_F^approx`` estimates ``||J(x')||_F^2`` (Sec. 5.1). ``attack`` maximises CE
    (one-step: ``attacks.fgsm_rs(eps)``, FGSM from a random start with step ``1.25 eps``).
    During the epsilon warm-up ``alpha`` and ``beta`` are scaled by ``eps_t / eps`` (Sec. 5.3).
    Defaults: one-step CIFAR-10 values (App. B; MNIST: ``alpha = 1e-5``, ``beta = 0.3``).
    """
    kwargs.setdefault("scale_weights_with_eps", True)
    return Regularized(
        attack,
        alpha=alpha,
        beta=beta,
        ce_on="adv",
        jac_on="adv",
        kl_base=kl_base,
        eps_warmup_steps=eps_warmup_steps,
        **kwargs,
    )


def atlas_l(attack: Attack, alpha: float = 2e-4, **kwargs: Any) -> Regularized:
    """ATLAS-l (App. C, Eq. 20): the local part, ``CE(f(x'), y) + alpha ||J(x')||_F^approx``."""
    return atlas(attack, alpha=alpha, beta=0.0, **kwargs)


def atlas_g(attack: Attack, beta: float = 5.0, **kwargs: Any) -> Regularized:
    """ATLAS-g (App. C, Eq. 21): the global part, ``CE(f(x'), y) + beta KL(p(x') || p(x))``."""
    return atlas(attack, alpha=0.0, beta=beta, **kwargs)


def trades_jac(
    attack: Attack,
    alpha: float = 2e-4,
    beta: float = 0.5,
    eps_warmup_steps: int = 0,
    kl_base: str = "clean",
    **kwargs: Any,
) -> Regularized:
    """TradesJac (ATLAS App. D.1):
    ``CE(f(x), y) + alpha ||J(x)||_F^approx + beta KL(p(x) || p(x'))``, ``x'`` maximising the KL
    (build ``attack`` with ``loss=kl_attack_loss(kl_base)``). Defaults: App. D.1 (CIFAR)."""
    kwargs.setdefault("scale_weights_with_eps", True)
    return Regularized(
        attack,
        alpha=alpha,
        beta=beta,
        ce_on="clean",
        jac_on="clean",
        kl_base=kl_base,
        attack_target="clean_logits",
        eps_warmup_steps=eps_warmup_steps,
        **kwargs,
    )


# ----------------------------------------------------------------------------------------------
# Config builders ``(cfg, steps_per_epoch) -> defense`` for ``advjax.defenses.DEFENSES``.


def adversary_from_config(cfg: Any, loss: str) -> Attack:
    """The training adversary of a defense config, maximising ``loss``.

    One-step (``one_step``, default when ``steps`` is absent or 1): FGSM from a uniform random
    start, step ``step_size`` (default ``1.25 eps``; ``attacks.fgsm_rs``). Multi-step: PGD with
    ``step_size`` and ``steps``, last iterate, random start unless ``random_init=False``.
    ``cfg.attack = dict(name=..., ...)``: that attack instead, e.g. a spatial worst-of-k
    (``objectives.attack_from_defense_config``), maximising ``loss`` unless the dict names one.
    """
    if cfg.get("attack", None):
        return attack_from_defense_config(cfg, loss)
    steps = cfg.get("steps", 1)
    one_step = cfg.get("one_step", steps == 1)
    norm = cfg.get("norm", "linf")
    if one_step:
        if steps != 1:
            raise ValueError(f"one_step=True but steps={steps}; set one_step=False for PGD")
        return attacks.fgsm_rs(cfg.eps, step_size=cfg.get("step_size", None), norm=norm, loss=loss)
    return pgd_from_config(cfg, loss, steps)


def _common(cfg: Any, steps_per_epoch: int, scale_default: bool) -> dict[str, Any]:
    return dict(
        eps_warmup_steps=warmup_steps(cfg, steps_per_epoch),
        num_projections=cfg.get("num_projections", 1),
        monitor_jacobian=cfg.get("monitor_jacobian", True),
        scale_weights_with_eps=cfg.get("scale_weights_with_eps", scale_default),
    )


def _forced_zero(cfg: Any, name: str, field: str) -> None:
    if cfg.get(field, 0.0):
        raise ValueError(f"{name} has {field} = 0 by definition; got {field}={cfg.get(field)}")


def trades_from_config(cfg: Any, steps_per_epoch: int) -> Regularized:
    kl_base = cfg.get("kl_base", "clean")
    attack = adversary_from_config(cfg, kl_attack_loss(kl_base))
    return trades(attack, cfg.get("beta", 6.0), kl_base, **_common(cfg, steps_per_epoch, False))


def klr_from_config(cfg: Any, steps_per_epoch: int) -> Regularized:
    """KLR (Yang et al. 2019), the SRT document's spatial baseline: ``CE(f(x), y) + beta
    KL(p(x) || p(x'))`` with ``x'`` the transform of a spatial search that maximises the KL;
    TRADES with a spatial adversary. ``cfg.attack`` defaults to Worst-of-10 rotation-translations
    (``+-30`` degrees, ``+-3`` px) and ``beta`` to 1 (our choice; the document gives none)."""
    kl_base = cfg.get("kl_base", "clean")
    attack = attack_from_defense_config(
        cfg, kl_attack_loss(kl_base), default=dict(name="worst_of_k", k=10)
    )
    return trades(attack, cfg.get("beta", 1.0), kl_base, **_common(cfg, steps_per_epoch, False))


def mart_from_config(cfg: Any, steps_per_epoch: int) -> Regularized:
    variant = cfg.get("mart_variant", "original")
    kl_base = cfg.get("kl_base", "clean")
    _check_choice("mart_variant", variant, MART_VARIANTS)
    loss = "ce" if variant == "original" else kl_attack_loss(kl_base)
    attack = adversary_from_config(cfg, loss)
    return mart(
        attack, cfg.get("beta", 5.0), variant, kl_base, **_common(cfg, steps_per_epoch, False)
    )


def jac_from_config(cfg: Any, steps_per_epoch: int) -> Regularized:
    del steps_per_epoch
    return jac(
        cfg.get("alpha", 0.5),
        cfg.get("num_projections", 1),
        monitor_jacobian=cfg.get("monitor_jacobian", True),
    )


def atlas_from_config(cfg: Any, steps_per_epoch: int) -> Regularized:
    attack = adversary_from_config(cfg, "ce")
    return atlas(
        attack,
        cfg.get("alpha", 2e-4),
        cfg.get("beta", 5.0),
        kl_base=cfg.get("kl_base", "adv"),
        **_common(cfg, steps_per_epoch, True),
    )


def atlas_l_from_config(cfg: Any, steps_per_epoch: int) -> Regularized:
    _forced_zero(cfg, "atlas_l", "beta")
    attack = adversary_from_config(cfg, "ce")
    return atlas_l(attack, cfg.get("alpha", 2e-4), **_common(cfg, steps_per_epoch, True))


def atlas_g_from_config(cfg: Any, steps_per_epoch: int) -> Regularized:
    _forced_zero(cfg, "atlas_g", "alpha")
    attack = adversary_from_config(cfg, "ce")
    return atlas_g(
        attack,
        cfg.get("beta", 5.0),
        kl_base=cfg.get("kl_base", "adv"),
        **_common(cfg, steps_per_epoch, True),
    )


def trades_jac_from_config(cfg: Any, steps_per_epoch: int) -> Regularized:
    kl_base = cfg.get("kl_base", "clean")
    attack = adversary_from_config(cfg, kl_attack_loss(kl_base))
    return trades_jac(
        attack,
        cfg.get("alpha", 2e-4),
        cfg.get("beta", 0.5),
        kl_base=kl_base,
        **_common(cfg, steps_per_epoch, True),
    )
