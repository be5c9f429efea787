"""The attack contract shared by every attack.

An attack is a frozen (hashable) dataclass built by a factory from its hyperparameters::

    attack = advjax.attacks.pgd(eps=0.3, step_size=0.01, steps=40)
    x_adv = attack(model_fn, variables, x, y, key)            # [B, H, W, C]
    result = attack.run(model_fn, variables, x, y, key)       # AttackResult(x_adv, loss, success)

``model_fn(variables, x) -> logits`` runs the model in inference mode on NHWC images in [0, 1]
(attacks that take a ``domain``, ``advjax.validation.Domain``, also run on other inputs).
Attacks are pure: jit them with ``model_fn`` static (``jax.jit(attack, static_argnums=0)``), vmap
them over the batch, or over ensemble members by stacking ``variables`` on a leading axis.
``key`` is one PRNG key for the batch or one key per example (``[B]``); per-example keys make the
result for an example independent of the batch (and device shard) it sits in.
"""

from __future__ import annotations

import contextvars
import dataclasses
import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from advjax import validation
from advjax.models.canonicalize import auto_canonicalize

ModelFn = Callable[[Any, jax.Array], jax.Array]


class AttackResult(NamedTuple):
    """Auxiliary output of ``Attack.run`` (a pytree).

    Fields: ``x_adv`` (adversarial batch), ``loss`` (per-example objective the attack maximises, at
    ``x_adv``: the loss, or its negation for targeted attacks; for minimum-norm and sparse attacks
    (FAB, C&W, DDN, RayS, point-wise) minus the size of the smallest adversarial found, ``-inf``
    when none was found),
    ``success`` (per-example bool: misclassified, or classified as the target when targeted; all
    False when the target is not a label vector, e.g. reference logits).
    """

    x_adv: jax.Array
    loss: jax.Array
    success: jax.Array


def check_nonnegative(**values: float) -> None:
    for name, value in values.items():
        if isinstance(value, jax.core.Tracer):  # traced hyperparameters (e.g. eps warm-up)
            continue
        if value is None or not value >= 0:
            raise ValueError(f"{name} must be >= 0, got {value}")


_ATTACK_DEPTH = contextvars.ContextVar("advjax_attack_depth", default=0)


def validated(entry: Callable) -> Callable:
    """Decorates an attack entry point ``(self, model_fn, variables, x, y, key, ...)``.

    The outermost call checks ``x``, ``y`` and ``key`` with ``advjax.validation.check_batch``
    (static checks at trace time; value checks at once on concrete arrays, as a host callback
    under ``jit``) against the attack's input domain (``validation.domain_of``: NHWC images in
    [0, 1] unless the attack was built with another ``domain``) and turns raw ``uint32`` keys
    into typed keys. Attacks called by other attacks (restarts, AutoAttack's components) are not
    checked again. On CPU the outermost call also runs ``model_fn`` with its convolutions in the
    canonical form (``advjax.models.canonicalize.auto_canonicalize``: same values and gradients,
    faster).
    """

    @functools.wraps(entry)
    def checked(self, model_fn, variables, x, y, key, *args, **kwargs):
        if _ATTACK_DEPTH.get() == 0:
            num_classes = None
            if isinstance(y, tuple) or getattr(y, "ndim", None) == 1:
                num_classes = validation.num_classes_of(model_fn, variables, x)
            validation.check_batch(x, y, num_classes, validation.domain_of(self))
            key = validation.as_key(key, x.shape[0])
            model_fn = auto_canonicalize(model_fn)
        token = _ATTACK_DEPTH.set(_ATTACK_DEPTH.get() + 1)
        try:
            return entry(self, model_fn, variables, x, y, key, *args, **kwargs)
        finally:
            _ATTACK_DEPTH.reset(token)

    return checked


def split_keys(key: jax.Array, num: int) -> jax.Array:
    """Splits a key (``[]``) or per-example keys (``[B]``) into ``num`` independent sets.

    Returns ``[num]`` or ``[num, B]`` keys.
    """
    if key.ndim == 0:
        return jax.random.split(key, num)
    return jax.vmap(lambda k: jax.random.split(k, num), out_axes=1)(key)


def per_example_keys(key: jax.Array, batch: int) -> jax.Array:
    """Per-example keys ``[B]``: as given, or split from one key."""
    if key.ndim == 1:
        if key.shape[0] != batch:
            raise ValueError(f"per-example keys must have shape [{batch}], got {key.shape}")
        return key
    return jax.random.split(key, batch)


MODEL_KEY = "noise_rng"


def with_model_key(variables: Any, key: jax.Array) -> Any:
    """``variables`` with a PRNG key for a randomised model under ``MODEL_KEY``.

    Randomised models (noise injection, random transforms) are ``model_fn``s that read
    ``variables[MODEL_KEY]``; attacks with expectation over transformation (EoT) call them with a
    fresh key per draw. Deterministic models never see this key.
    """
    if not isinstance(variables, dict):
        raise TypeError(
            f"randomised models take dict variables (the key goes under {MODEL_KEY!r}), "
            f"got {type(variables).__name__}"
        )
    return {**variables, MODEL_KEY: key}


def is_label_vector(y: Any) -> bool:
    return (
        isinstance(y, jax.Array | np.ndarray)
        and y.ndim == 1
        and jnp.issubdtype(y.dtype, jnp.integer)
    )


def success(logits: jax.Array, y: Any, targeted: bool) -> jax.Array:
    """Per-example attack success: misclassified, or predicted as the target when targeted."""
    if isinstance(y, tuple):  # (labels, targets), as taken by the targeted DLR loss
        return jnp.argmax(logits, axis=-1) == y[1]
    if not is_label_vector(y):
        return jnp.zeros(logits.shape[0], dtype=bool)
    pred = jnp.argmax(logits, axis=-1)
    return pred == y if targeted else pred != y


def better(
    new_success: jax.Array, new_score: jax.Array, best_success: jax.Array, best_score: jax.Array
) -> jax.Array:
    """Lexicographic per-example comparison: success first, then a higher attack score."""
    return (new_success & ~best_success) | (
        (new_success == best_success) & (new_score > best_score)
    )


@dataclasses.dataclass(frozen=True)
class Attack:
    """Base class: subclasses implement ``run``; calling the attack returns ``x_adv`` only."""

    def run(
        self, model_fn: ModelFn, variables: Any, x: jax.Array, y: Any, key: jax.Array
    ) -> AttackResult:
        raise NotImplementedError

    def scaled(self, factor: Any) -> Attack:
        """The attack with its budget (eps and step sizes) multiplied by ``factor``.

        ``factor`` may be a traced scalar, e.g. an epsilon warm-up inside a train step.
        """
        raise NotImplementedError(f"{type(self).__name__} does not support budget scaling")

    def __call__(
        self, model_fn: ModelFn, variables: Any, x: jax.Array, y: Any, key: jax.Array
    ) -> jax.Array:
        return self.run(model_fn, variables, x, y, key).x_adv


class QueryAttack(Attack):
    """Base of the query-based attacks (Square, RayS, SPSA, HopSkipJump): subclasses implement
    ``run_with_queries``, ``run`` plus the per-example number of model queries (int32 ``[B]``)."""

    @validated
    def run(
        self, model_fn: ModelFn, variables: Any, x: jax.Array, y: Any, key: jax.Array
    ) -> AttackResult:
        return self.run_with_queries(model_fn, variables, x, y, key)[0]

    def run_with_queries(
        self, model_fn: ModelFn, variables: Any, x: jax.Array, y: Any, key: jax.Array
    ) -> tuple[AttackResult, jax.Array]:
        raise NotImplementedError
