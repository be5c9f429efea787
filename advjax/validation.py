"""One validation layer for what attacks and the evaluation receive, eager or under ``jax.jit``.

advjax takes NHWC float images in [0, 1] and integer labels in [0, num_classes) (DESIGN.md,
"Contracts"). ``check_batch`` checks both in two tiers:

* **Static** properties (rank, layout, dtype, batch sizes, label dtype, key shape) are read from
  shapes and dtypes, so they raise at once, at trace time, under ``jit``, ``vmap`` and
  ``shard_map`` alike.
* **Values** (NaN/inf pixels, pixels outside [0, 1], labels outside [0, num_classes)) are checked
  with NumPy when the arrays are concrete, raising ``ValueError`` that names the offending value and
  example. On traced arrays (inside ``jax.jit``) they become one host callback inside the compiled
  computation: the call then fails with ``jax.errors.JaxRuntimeError`` whose message ends with the
  same ``ValueError``. The callback reads three scalars per batch; ``value_checks(False)`` (or the
  environment variable ``ADVJAX_VALUE_CHECKS=0``) leaves it out of whatever is traced inside the
  ``with`` block. The training and evaluation loops do so: their ``Dataset`` checked its uint8
  images and labels when it was built, and the loops check the model's classes against it.
  The setting is read when a function is traced: ``jax.jit`` caches traces by function, so an
  attack already compiled keeps the checks it was compiled with.
"""

from __future__ import annotations

import contextlib
import contextvars
import os
from collections.abc import Iterator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from advjax.models.checks import check_images as check_image_shape

_VALUE_CHECKS = contextvars.ContextVar(
    "advjax_value_checks", default=os.environ.get("ADVJAX_VALUE_CHECKS", "1") != "0"
)


@contextlib.contextmanager
def value_checks(enabled: bool) -> Iterator[None]:
    """Turns the traced value checks on or off for what is traced inside the block.

    Concrete arrays are always checked (it costs one pass over the batch in NumPy).
    """
    token = _VALUE_CHECKS.set(bool(enabled))
    try:
        yield
    finally:
        _VALUE_CHECKS.reset(token)


def is_traced(*arrays: Any) -> bool:
    return any(isinstance(a, jax.core.Tracer) for a in arrays)


# ----------------------------------------------------------------------------------------------
# Static checks


def check_labels_static(y: Any, batch: int) -> None:
    """Integer labels ``[B]``; a pair ``(labels, targets)``; or reference outputs ``[B, ...]``."""
    if isinstance(y, tuple):
        for part in y:
            check_labels_static(part, batch)
        return
    if not hasattr(y, "shape") or not hasattr(y, "dtype"):
        raise TypeError(
            f"labels must be an integer array of shape [{batch}], got {type(y).__name__}; "
            "convert with jnp.asarray(y, jnp.int32)"
        )
    if y.ndim == 0:
        raise ValueError(
            f"labels must have shape [{batch}] (one per image), got a scalar; for one image "
            "use y[None]"
        )
    if y.shape[0] != batch:
        raise ValueError(
            f"labels have shape {tuple(y.shape)} but the batch has {batch} images: one label "
            "per image"
        )
    if y.ndim == 1 and not jnp.issubdtype(y.dtype, jnp.integer):
        raise TypeError(
            f"labels must be integers, got dtype {y.dtype}; convert with y.astype(jnp.int32) "
            "(rank-2 float targets, such as reference logits, are fine)"
        )


def as_key(key: Any, batch: int) -> jax.Array:
    """A typed PRNG key ``[]`` or per-example keys ``[B]``; raw ``uint32`` keys are wrapped."""
    if not hasattr(key, "dtype"):
        raise TypeError(f"key must be a PRNG key (jax.random.key(seed)), got {type(key).__name__}")
    if not jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        if key.dtype != jnp.uint32 or key.ndim not in (1, 2) or key.shape[-1] != 2:
            raise TypeError(
                f"key must be a PRNG key (jax.random.key(seed)), got dtype {key.dtype} and "
                f"shape {tuple(key.shape)}"
            )
        key = jax.random.wrap_key_data(key)
    if key.ndim > 1 or (key.ndim == 1 and key.shape[0] != batch):
        raise ValueError(
            f"key must be one PRNG key or one per example (shape [{batch}]), got shape "
            f"{tuple(key.shape)}"
        )
    return key


# ----------------------------------------------------------------------------------------------
# Value checks


def _image_problem(lo: float, hi: float, bad: int, first_bad: int) -> str | None:
    if bad:
        return (
            f"images contain {bad} NaN or infinite pixel value(s) (first in example "
            f"{first_bad}); clean the data or the preprocessing that produced them"
        )
    if lo < 0.0 or hi > 1.0:
        hint = " (uint8-range pixels: divide by 255)" if hi > 1.0 and hi <= 255.0 else ""
        return (
            f"images must lie in [0, 1]{hint}; got values in [{lo:.4g}, {hi:.4g}] "
            "(normalisation belongs inside the model)"
        )
    return None


def _label_problem(lo: int, hi: int, num_classes: int | None) -> str | None:
    if lo < 0 or (num_classes is not None and hi >= num_classes):
        allowed = f"[0, {num_classes})" if num_classes is not None else ">= 0"
        return f"labels must lie in {allowed}; got labels in [{lo}, {hi}]"
    return None


def _raise_if(problem: str | None) -> None:
    if problem is not None:
        raise ValueError(problem)


def _image_stats(x: jax.Array) -> tuple[jax.Array, ...]:
    xf = x.astype(jnp.float32)
    finite = jnp.isfinite(xf)
    per_example_bad = jnp.any(~finite.reshape(x.shape[0], -1), axis=1)
    return (
        jnp.min(jnp.where(finite, xf, jnp.inf)),
        jnp.max(jnp.where(finite, xf, -jnp.inf)),
        jnp.sum(~finite),
        jnp.argmax(per_example_bad),
    )


def check_image_values(x: Any) -> None:
    """Finite and in [0, 1]: at once on concrete ``x``, by a host callback on traced ``x``."""
    if x.size == 0 or not jnp.issubdtype(x.dtype, jnp.floating):
        return
    if not is_traced(x):
        values = np.asarray(x, np.float32)
        finite = np.isfinite(values)
        bad = int((~finite).sum())
        first = int(np.argmax(~finite.reshape(len(values), -1).all(axis=1))) if bad else 0
        lo = float(values[finite].min()) if finite.any() else 0.0
        hi = float(values[finite].max()) if finite.any() else 0.0
        _raise_if(_image_problem(lo, hi, bad, first))
    elif _VALUE_CHECKS.get():
        lo, hi, bad, first = _image_stats(x)
        jax.debug.callback(
            lambda *s: _raise_if(_image_problem(float(s[0]), float(s[1]), int(s[2]), int(s[3]))),
            lo,
            hi,
            bad,
            first,
        )


def check_label_values(y: Any, num_classes: int | None) -> None:
    """Integer labels in [0, num_classes) (``>= 0`` when ``num_classes`` is None)."""
    if isinstance(y, tuple):
        for part in y:
            check_label_values(part, num_classes)
        return
    if y.ndim != 1 or y.shape[0] == 0 or not jnp.issubdtype(y.dtype, jnp.integer):
        return
    if not is_traced(y):
        values = np.asarray(y)
        _raise_if(_label_problem(int(values.min()), int(values.max()), num_classes))
    elif _VALUE_CHECKS.get():
        jax.debug.callback(
            lambda lo, hi: _raise_if(_label_problem(int(lo), int(hi), num_classes)),
            jnp.min(y),
            jnp.max(y),
        )


# ----------------------------------------------------------------------------------------------
# Entry points


def check_batch(x: Any, y: Any = None, num_classes: int | None = None) -> None:
    """Checks a batch of NHWC images in [0, 1] and, when given, its labels (or targets).

    Raises:
      TypeError: non-array or non-float images; non-integer labels; non-key keys.
      ValueError: wrong rank or layout, empty batch, mismatched batch sizes, NaN/inf or
        out-of-range pixels, labels outside [0, num_classes) (see the module docstring for how
        value errors surface under ``jit``).
    """
    if not hasattr(x, "shape") or not hasattr(x, "dtype"):
        raise TypeError(f"images must be an array [batch, height, width, channels], got {x!r:.80}")
    check_image_shape(x)
    if x.shape[0] == 0:
        raise ValueError(f"the batch is empty (images of shape {tuple(x.shape)})")
    if y is not None:
        check_labels_static(y, x.shape[0])
    check_image_values(x)
    if y is not None:
        check_label_values(y, num_classes)


def num_classes_of(model_fn: Any, variables: Any, x: Any) -> int | None:
    """The model's number of outputs for ``x`` (abstract evaluation, cached per model and
    shapes), or None when ``model_fn`` cannot be evaluated on its own (a randomised model whose
    key the attack adds)."""
    leaves, treedef = jax.tree.flatten(variables)
    signature = (treedef, tuple((jnp.shape(a), jnp.result_type(a)) for a in leaves), x.shape[1:])
    try:
        cache_key = (model_fn, signature, str(x.dtype))
        hash(cache_key)
    except TypeError:
        cache_key = None
    if cache_key is not None and cache_key in _NUM_CLASSES:
        return _NUM_CLASSES[cache_key]
    probe = jax.ShapeDtypeStruct((1, *x.shape[1:]), x.dtype)
    try:
        out = jax.eval_shape(model_fn, variables, probe)
        value = int(out.shape[-1]) if getattr(out, "ndim", 0) == 2 else None
    except Exception:  # noqa: BLE001 - a model that needs more than (variables, x): skip the check
        value = None
    if cache_key is not None:
        if len(_NUM_CLASSES) > 256:
            _NUM_CLASSES.clear()
        _NUM_CLASSES[cache_key] = value
    return value


_NUM_CLASSES: dict[Any, int | None] = {}
