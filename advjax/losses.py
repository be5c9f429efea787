"""Per-example objectives on logits.

Every loss here maps ``(logits [B, K], target) -> [B]`` so that attacks can maximise (or, when
targeted, minimise) it per example and defenses can average it. ``target`` is usually integer labels
``[B]``; the KL losses take reference logits instead, and the targeted DLR loss a pair
``(labels, target_labels)``.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

LossFn = Callable[[jax.Array, jax.Array], jax.Array]


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Softmax cross-entropy ``-log softmax(z)_y``."""
    log_probs = jax.nn.log_softmax(logits, axis=-1)
    return -jnp.take_along_axis(log_probs, labels[:, None].astype(jnp.int32), axis=-1)[:, 0]


def kl_divergence(p_logits: jax.Array, q_logits: jax.Array) -> jax.Array:
    """``KL(P || Q) = sum_k p_k (log p_k - log q_k)`` with ``P = softmax(p_logits)``."""
    log_p = jax.nn.log_softmax(p_logits, axis=-1)
    log_q = jax.nn.log_softmax(q_logits, axis=-1)
    return jnp.sum(jnp.exp(log_p) * (log_p - log_q), axis=-1)


def kl_from_reference(logits: jax.Array, reference_logits: jax.Array) -> jax.Array:
    """``KL(softmax(reference) || softmax(logits))``: the TRADES term ``KL(f(x) || f(x'))``.

    Called with ``logits = f(x')`` (the adversarial point) and ``reference_logits = f(x)``.
    """
    return kl_divergence(reference_logits, logits)


def kl_to_reference(logits: jax.Array, reference_logits: jax.Array) -> jax.Array:
    """``KL(softmax(logits) || softmax(reference))``: the reverse direction."""
    return kl_divergence(logits, reference_logits)


def _true_and_best_other(logits: jax.Array, labels: jax.Array) -> tuple[jax.Array, jax.Array]:
    num_classes = logits.shape[-1]
    onehot = jax.nn.one_hot(labels, num_classes, dtype=bool)
    true = jnp.sum(jnp.where(onehot, logits, 0.0), axis=-1)
    other = jnp.max(jnp.where(onehot, -jnp.inf, logits), axis=-1)
    return true, other


def margin(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """C&W margin ``max_{j != y} z_j - z_y``: positive iff the example is misclassified."""
    true, other = _true_and_best_other(logits, labels)
    return other - true


def dlr(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Difference of logits ratio (Croce & Hein 2020, eq. 5), maximised by the attacker.

    ``DLR = -(z_y - max_{j != y} z_j) / (z_pi1 - z_pi3)`` with ``z_pi`` the sorted logits.
    """
    true, other = _true_and_best_other(logits, labels)
    top = jnp.sort(logits, axis=-1)[:, ::-1]
    return -(true - other) / (top[:, 0] - top[:, 2] + 1e-12)


def targeted_dlr(logits: jax.Array, labels_and_targets: tuple[jax.Array, jax.Array]) -> jax.Array:
    """Targeted DLR (Croce & Hein 2020, eq. 6), maximised by the attacker.

    ``-(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4) / 2)``; the target is a pair ``(labels, targets)``.
    """
    labels, targets = labels_and_targets
    true = jnp.take_along_axis(logits, labels[:, None].astype(jnp.int32), axis=-1)[:, 0]
    tgt = jnp.take_along_axis(logits, targets[:, None].astype(jnp.int32), axis=-1)[:, 0]
    top = jnp.sort(logits, axis=-1)[:, ::-1]
    return -(true - tgt) / (top[:, 0] - 0.5 * (top[:, 2] + top[:, 3]) + 1e-12)


def entropy(logits: jax.Array, labels: jax.Array | None = None) -> jax.Array:
    """Shannon entropy of ``softmax(logits)``; ``labels`` is ignored."""
    del labels
    log_p = jax.nn.log_softmax(logits, axis=-1)
    return -jnp.sum(jnp.exp(log_p) * log_p, axis=-1)


def boosted_cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """MART's BCE ``-log p_y - log(1 - max_{j != y} p_j)`` (Wang et al. 2020, eq. 6)."""
    probs = jax.nn.softmax(logits, axis=-1)
    onehot = jax.nn.one_hot(labels, logits.shape[-1], dtype=bool)
    other = jnp.max(jnp.where(onehot, 0.0, probs), axis=-1)
    return cross_entropy(logits, labels) - jnp.log(1.0 - other + 1e-12)


LOSSES: dict[str, LossFn] = {
    "ce": cross_entropy,
    "kl_from_reference": kl_from_reference,
    "kl_to_reference": kl_to_reference,
    "margin": margin,
    "dlr": dlr,
    "targeted_dlr": targeted_dlr,
    "entropy": entropy,
    "boosted_ce": boosted_cross_entropy,
}


def get_loss(loss: str | LossFn) -> LossFn:
    """Resolves a loss given by name (see ``LOSSES``) or passes a callable through."""
    if callable(loss):
        return loss
    if loss not in LOSSES:
        raise ValueError(f"unknown loss {loss!r}; valid losses: {', '.join(sorted(LOSSES))}")
    return LOSSES[loss]
