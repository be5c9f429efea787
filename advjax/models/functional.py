"""Functional wrappers turning Flax modules into the advjax model-function contract.

DESIGN.md, "Contracts: Model function": ``model_fn(variables, x) -> logits`` in inference mode, with
``x`` NHWC float32 in [0, 1]. Attacks take ``model_fn`` as a static argument of ``jax.jit``, so the
wrappers here are frozen dataclasses: two wrappers of equal modules compare and hash equal, and
re-wrapping a module never triggers a recompile.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax.core import unfreeze

Variables = Mapping[str, Any]


def _check_hashable(model: nn.Module) -> None:
    try:
        hash(model)
    except TypeError as err:
        raise TypeError(
            f"{type(model).__name__} is not hashable, so it cannot be a static jit argument; pass "
            f"tuple (not list or array) attributes, e.g. mean=(0.5, 0.5, 0.5). ({err})"
        ) from err


@dataclasses.dataclass(frozen=True)
class ModelFn:
    """``model_fn(variables, x) -> logits``: ``model`` in inference mode (``train=False``)."""

    model: nn.Module

    def __post_init__(self) -> None:
        _check_hashable(self.model)

    def __call__(self, variables: Variables, x: jax.Array) -> jax.Array:
        return self.model.apply(variables, x, train=False)


@dataclasses.dataclass(frozen=True)
class FeatureFn:
    """``feature_fn(variables, x) -> (logits, features)`` in inference mode.

    ``features`` is the penultimate representation [batch, D] (the input of the last dense layer).
    """

    model: nn.Module

    def __post_init__(self) -> None:
        _check_hashable(self.model)

    def __call__(self, variables: Variables, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        return self.model.apply(variables, x, train=False, return_features=True)


def make_model_fn(model: nn.Module) -> ModelFn:
    """Wrap ``model`` as a hashable inference-mode ``model_fn(variables, x) -> logits``."""
    return ModelFn(model)


def make_feature_fn(model: nn.Module) -> FeatureFn:
    """Wrap ``model`` as a hashable inference-mode ``feature_fn(variables, x) -> (logits, z)``."""
    return FeatureFn(model)


def init_variables(model: nn.Module, key: jax.Array, input_shape: Sequence[int]) -> dict[str, Any]:
    """Initialise ``model`` on zeros of shape ``(1, *input_shape)`` (``input_shape`` is HWC).

    Returns a plain dict with ``'params'`` and, for models with BatchNorm, ``'batch_stats'``.
    """
    x = jnp.zeros((1, *tuple(input_shape)), jnp.float32)
    variables = model.init(key, x, train=False)
    return {name: unfreeze(collection) for name, collection in variables.items()}


def apply_train(
    model: nn.Module, variables: Variables, x: jax.Array, return_features: bool = False
) -> tuple[Any, dict[str, Any]]:
    """Run ``model`` in training mode (batch statistics, running averages updated).

    Returns ``(logits, new_batch_stats)``, or ``((logits, features), new_batch_stats)`` when
    ``return_features``; ``new_batch_stats`` is ``{}`` for models without BatchNorm. Under
    ``pmap`` the caller averages ``new_batch_stats`` across devices (``lax.pmean``) unless the
    model was built with ``bn_axis_name``.
    """
    out, mutated = model.apply(
        variables, x, train=True, return_features=return_features, mutable=["batch_stats"]
    )
    return out, unfreeze(mutated).get("batch_stats", {})


def param_count(params: Any) -> int:
    """Total number of scalars in a parameter pytree."""
    return int(sum(leaf.size for leaf in jax.tree_util.tree_leaves(params)))
