"""Functional wrappers turning Flax modules into the advjax model-function contract.

DESIGN.md, "Contracts: Model function": ``model_fn(variables, x) -> logits`` in inference mode, with
``x`` NHWC float32 in [0, 1]; "Ensembles and features": models expose named intermediate layers in
training and inference mode.

* :func:`forward` is the one place a module is applied: ``forward(model, variables, x, train=...,
  features=(...)) -> Forward(logits, features, batch_stats)``. Features are the values a model
  records with ``self.sow("intermediates", name, value)`` (:data:`FEATURE_COLLECTION`); the
  ``intermediates`` collection is made mutable only when features are requested, and ``sow`` into
  an immutable collection is a no-op, so recording costs nothing otherwise. In training mode
  BatchNorm uses batch statistics and the updated running statistics come back in ``batch_stats``.
* :func:`apply_train` is ``forward(..., train=True)`` returning ``(logits, new_batch_stats)``.
* :func:`make_model_fn` and :func:`make_feature_fn` build hashable callables. Attacks take
  ``model_fn`` as a static argument of ``jax.jit``, so the wrappers are frozen dataclasses: two
  wrappers of equal modules (and equal options) compare and hash equal, and re-wrapping a module
  never triggers a recompile. ``make_model_fn(model, train=True)`` runs BatchNorm in training mode
  (batch statistics) and drops the running-statistics update, for generating a training adversary
  "with BN in train mode" (spec/thesis_ch2_3.md, 9.8 item 10) without touching the train state.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax.core import unfreeze

from advjax.models.canonicalize import auto_canonicalize

Variables = Mapping[str, Any]

#: The Flax collection that models ``sow`` their named features into.
FEATURE_COLLECTION = "intermediates"


class Forward(NamedTuple):
    """The result of :func:`forward`.

    Attributes:
      logits: ``[batch, num_classes]``.
      features: ``{name: value}`` for exactly the requested feature names.
      batch_stats: the updated BatchNorm running statistics in training mode; ``{}`` in inference
        mode or for models without BatchNorm.
    """

    logits: jax.Array
    features: dict[str, jax.Array]
    batch_stats: dict[str, Any]


def _check_hashable(model: nn.Module) -> None:
    try:
        hash(model)
    except TypeError as err:
        raise TypeError(
            f"{type(model).__name__} is not hashable, so it cannot be a static jit argument; pass "
            f"tuple (not list or array) attributes, e.g. mean=(0.5, 0.5, 0.5). ({err})"
        ) from err


def _feature_request(features: str | Sequence[str]) -> tuple[str, ...]:
    """Normalise a feature request to a tuple of names (a bare string is one name)."""
    names = (features,) if isinstance(features, str) else tuple(features)
    for name in names:
        if not isinstance(name, str) or not name:
            raise TypeError(f"feature names must be non-empty strings, got {name!r}")
    if len(set(names)) != len(names):
        raise ValueError(f"feature names requested twice: {names}")
    return names


def _flatten_recorded(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": (v,), "block": {"b": (w,)}}`` -> ``{"a": (v,), "block/b": (w,)}``.

    Features sown by the top-level module keep their plain names; features sown by submodules are
    addressed by their module path joined with ``/``.
    """
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, Mapping):
            flat.update(_flatten_recorded(value, f"{prefix}{key}/"))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _select_features(
    model: nn.Module, recorded: Mapping[str, Any], names: tuple[str, ...]
) -> dict[str, jax.Array]:
    flat = _flatten_recorded(recorded)
    missing = [name for name in names if name not in flat]
    if missing:
        if flat:
            have = "it records: " + ", ".join(repr(name) for name in flat)
        else:
            have = f"it records none (record one with self.sow({FEATURE_COLLECTION!r}, name, x))"
        raise ValueError(
            f"{type(model).__name__} does not record the feature(s) "
            f"{', '.join(repr(name) for name in missing)}; {have}."
        )
    out = {}
    for name in names:
        value = flat[name]
        if isinstance(value, tuple):  # sow's default: a tuple of every value stored under name
            if len(value) != 1:
                raise ValueError(
                    f"{type(model).__name__} recorded the feature {name!r} {len(value)} times in "
                    f"one call (a submodule applied more than once?); features must be unique."
                )
            value = value[0]
        out[name] = value
    return out


def forward(
    model: nn.Module,
    variables: Variables,
    x: jax.Array,
    *,
    train: bool,
    features: str | Sequence[str] = (),
    rngs: Any = None,
) -> Forward:
    """Apply ``model`` to ``x`` and return its logits, the requested features and BatchNorm stats.

    Args:
      model: a Flax module called as ``model(x, train=...)`` that returns logits.
      variables: ``{'params': ..., 'batch_stats': ...}`` (an ``intermediates`` entry is ignored).
      x: NHWC float images in [0, 1].
      train: training mode (BatchNorm on batch statistics, running averages updated and returned
        in ``batch_stats``) or inference mode (running averages, ``batch_stats == {}``).
      features: names of the intermediate features to return (the zoo models list theirs in
        ``feature_names``); a bare string is one name. Nothing is recorded when empty.
      rngs: optional PRNG keys for ``model.apply`` (e.g. ``{'dropout': key}``).

    Returns:
      ``Forward(logits, features, batch_stats)``. Under ``pmap`` the caller averages
      ``batch_stats`` across devices (``lax.pmean``) unless the model was built with
      ``bn_axis_name``.

    Raises:
      ValueError: a requested name is not recorded by ``model`` (the message lists those that are).
    """
    names = _feature_request(features)
    mutable = (["batch_stats"] if train else []) + ([FEATURE_COLLECTION] if names else [])
    variables = {k: v for k, v in variables.items() if k != FEATURE_COLLECTION}

    def apply(variables, x, rngs):  # canonical convolutions on CPU (models.canonicalize)
        kwargs = {} if rngs is None else {"rngs": rngs}
        return model.apply(variables, x, train=train, mutable=mutable or False, **kwargs)

    out = auto_canonicalize(apply)(variables, x, rngs)
    if not mutable:
        return Forward(out, {}, {})
    logits, mutated = out
    mutated = unfreeze(mutated)
    selected = _select_features(model, mutated.get(FEATURE_COLLECTION, {}), names) if names else {}
    return Forward(logits, selected, mutated.get("batch_stats", {}) if train else {})


@dataclasses.dataclass(frozen=True)
class ModelFn:
    """``model_fn(variables, x) -> logits``.

    ``train=False`` (the default): inference mode, the DESIGN.md model function. ``train=True``:
    BatchNorm in training mode (batch statistics of ``x``); the running-statistics update is
    discarded, so ``variables`` are never changed.
    """

    model: nn.Module
    train: bool = False

    def __post_init__(self) -> None:
        _check_hashable(self.model)

    def __call__(self, variables: Variables, x: jax.Array) -> jax.Array:
        return forward(self.model, variables, x, train=self.train).logits


@dataclasses.dataclass(frozen=True)
class FeatureFn:
    """``feature_fn(variables, x) -> (logits, {name: value})`` for the names in ``features``.

    Inference mode by default; ``train=True`` uses batch statistics and discards their update, as
    :class:`ModelFn`.
    """

    model: nn.Module
    features: tuple[str, ...] = ("penultimate",)
    train: bool = False

    def __post_init__(self) -> None:
        _check_hashable(self.model)
        object.__setattr__(self, "features", _feature_request(self.features))

    def __call__(
        self, variables: Variables, x: jax.Array
    ) -> tuple[jax.Array, dict[str, jax.Array]]:
        out = forward(self.model, variables, x, train=self.train, features=self.features)
        return out.logits, out.features


def make_model_fn(model: nn.Module, train: bool = False) -> ModelFn:
    """Wrap ``model`` as a hashable ``model_fn(variables, x) -> logits``.

    ``train=False``: inference mode (running BatchNorm statistics), the model function attacks
    and evaluation use. ``train=True``: BatchNorm on the batch statistics of ``x`` with the
    running-statistics update dropped, for an adversary generated "with BN in train mode".
    """
    return ModelFn(model, train)


def make_feature_fn(
    model: nn.Module, features: str | Sequence[str] = ("penultimate",), train: bool = False
) -> FeatureFn:
    """Wrap ``model`` as a hashable ``feature_fn(variables, x) -> (logits, {name: value})``.

    Inference mode unless ``train=True`` (batch statistics, update dropped, as ``make_model_fn``).
    """
    return FeatureFn(model, _feature_request(features), train)


def init_variables(model: nn.Module, key: jax.Array, input_shape: Sequence[int]) -> dict[str, Any]:
    """Initialise ``model`` on zeros of shape ``(1, *input_shape)`` (``input_shape`` is HWC).

    Returns a plain dict with ``'params'`` and, for models with BatchNorm, ``'batch_stats'``.
    """
    x = jnp.zeros((1, *tuple(input_shape)), jnp.float32)
    variables = model.init(key, x, train=False)
    return {
        name: unfreeze(collection)
        for name, collection in variables.items()
        if name != FEATURE_COLLECTION
    }


def apply_train(
    model: nn.Module, variables: Variables, x: jax.Array
) -> tuple[jax.Array, dict[str, Any]]:
    """Run ``model`` in training mode (batch statistics, running averages updated).

    Returns ``(logits, new_batch_stats)``; ``new_batch_stats`` is ``{}`` for models without
    BatchNorm. Use :func:`forward` with ``train=True`` for features as well. Under ``pmap`` the
    caller averages ``new_batch_stats`` across devices (``lax.pmean``) unless the model was built
    with ``bn_axis_name``.
    """
    out = forward(model, variables, x, train=True)
    return out.logits, out.batch_stats


def param_count(params: Any) -> int:
    """Total number of scalars in a parameter pytree."""
    return int(sum(leaf.size for leaf in jax.tree_util.tree_leaves(params)))
