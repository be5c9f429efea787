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

Inputs that are not images (the toy 2-D points of UDR, tabular rows) are an explicit opt-in: an
attack built with ``domain=Domain("features", bounds)`` (``"features"``: unbounded) is checked
for a float batch ``[batch, ...]`` of finite values inside ``bounds`` instead of the image
contract, and clips its iterates to ``bounds`` (not at all for ``None``) instead of [0, 1]
(``Domain``, ``domain_of``). The default, ``IMAGES``, keeps every check above.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import os
from collections.abc import Iterator, Mapping
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
# Input domains

INPUT_KINDS = ("image", "features")


@dataclasses.dataclass(frozen=True)
class Domain:
    """What an attack's inputs are: their kind and the box they live in.

    * ``kind="image"`` (the default, ``IMAGES``): NHWC float images, with the layout checks of
      ``advjax.models.check_images`` (rank 4, not NCHW, float dtype).
    * ``kind="features"``: any float batch ``[batch, ...]`` of rank >= 2 (e.g. points ``[B, 2]``
      of a toy problem, tabular rows, embeddings); no layout checks.

    ``bounds``: ``(lo, hi)``, the box that inputs must lie in and that attacks clip their
    iterates to, or ``None`` for no box (inputs need only be finite; attacks never clip).
    ``IMAGES`` is ``Domain("image", (0.0, 1.0))``; ``FEATURES`` is ``Domain("features", None)``.

    Attacks that take a domain (``pgd``, ``fgsm``, ``fgsm_rs``, ``bim``, ``mifgsm``, ``udr``)
    accept a ``Domain``, ``"image"``, ``"features"`` (unbounded) or a dict such as
    ``{"kind": "features", "bounds": (-5.0, 5.0)}`` (``as_domain``); every other attack, and
    these by default, keeps the strict image contract.
    """

    kind: str = "image"
    bounds: tuple[float, float] | None = (0.0, 1.0)

    def __post_init__(self):
        if self.kind not in INPUT_KINDS:
            raise ValueError(
                f"unknown input kind {self.kind!r}; valid kinds: {', '.join(INPUT_KINDS)}"
            )
        if self.bounds is not None:
            try:
                lo, hi = (float(b) for b in self.bounds)
            except (TypeError, ValueError):
                raise ValueError(f"bounds must be (lo, hi) or None, got {self.bounds!r}") from None
            if not lo < hi:
                raise ValueError(f"bounds (lo, hi) need lo < hi, got {self.bounds!r}")
            object.__setattr__(self, "bounds", (lo, hi))


IMAGES = Domain()
FEATURES = Domain("features", None)


def as_domain(spec: Any) -> Domain:
    """A ``Domain`` from a ``Domain``, ``"image"`` (``IMAGES``), ``"features"`` (``FEATURES``:
    unbounded) or a mapping ``{"kind": ..., "bounds": ...}`` (e.g. from a config)."""
    if isinstance(spec, Domain):
        return spec
    if isinstance(spec, str):
        named = {"image": IMAGES, "features": FEATURES}
        if spec not in named:
            raise ValueError(f"unknown domain {spec!r}; valid names: image, features")
        return named[spec]
    if hasattr(spec, "to_dict"):
        spec = spec.to_dict()
    if isinstance(spec, Mapping):
        unknown = set(spec) - {"kind", "bounds"}
        if unknown:
            raise ValueError(f"a domain has 'kind' and 'bounds'; got {', '.join(sorted(unknown))}")
        bounds = spec.get("bounds", IMAGES.bounds)
        return Domain(spec.get("kind", "image"), None if bounds is None else tuple(bounds))
    raise TypeError(
        "domain must be a Domain, 'image', 'features' or {'kind': ..., 'bounds': ...}, got "
        f"{type(spec).__name__}"
    )


def domain_of(attack: Any) -> Domain:
    """The input domain of an attack: its ``domain``, else that of the attack(s) it wraps
    (``attack`` / ``attacks`` fields of combinators, which must agree), else ``IMAGES``."""
    own = getattr(attack, "domain", None)
    if isinstance(own, Domain):
        return own
    inner = getattr(attack, "attack", None)
    if inner is not None and inner is not attack:
        return domain_of(inner)
    parts = getattr(attack, "attacks", None)
    if isinstance(parts, tuple | list) and parts:
        domains = {domain_of(a) for a in parts}
        if len(domains) > 1:
            raise ValueError(
                f"{type(attack).__name__} combines attacks on different input domains: "
                f"{sorted(map(str, domains))}"
            )
        return domains.pop()
    return IMAGES


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


def _image_problem(
    lo: float, hi: float, bad: int, first_bad: int, domain: Domain = IMAGES
) -> str | None:
    image = domain.kind == "image"
    if bad:
        what = "pixel value(s)" if image else "value(s)"
        return (
            f"{'images' if image else 'inputs'} contain {bad} NaN or infinite {what} (first in "
            f"example {first_bad}); clean the data or the preprocessing that produced them"
        )
    if domain.bounds is None:
        return None
    low, high = domain.bounds
    if lo < low or hi > high:
        if not image:
            return (
                f"inputs must lie in the domain's bounds [{low:g}, {high:g}]; got values in "
                f"[{lo:.4g}, {hi:.4g}] (a domain with bounds=None has no box)"
            )
        uint8 = domain.bounds == (0.0, 1.0) and hi > 1.0 and hi <= 255.0
        hint = " (uint8-range pixels: divide by 255)" if uint8 else ""
        return (
            f"images must lie in [{low:g}, {high:g}]{hint}; got values in [{lo:.4g}, {hi:.4g}] "
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


def check_image_values(x: Any, domain: Domain = IMAGES) -> None:
    """Finite and inside ``domain.bounds`` ([0, 1] for images): at once on concrete ``x``, by a
    host callback on traced ``x``."""
    if x.size == 0 or not jnp.issubdtype(x.dtype, jnp.floating):
        return
    if not is_traced(x):
        values = np.asarray(x, np.float32)
        finite = np.isfinite(values)
        bad = int((~finite).sum())
        first = int(np.argmax(~finite.reshape(len(values), -1).all(axis=1))) if bad else 0
        lo = float(values[finite].min()) if finite.any() else 0.0
        hi = float(values[finite].max()) if finite.any() else 0.0
        _raise_if(_image_problem(lo, hi, bad, first, domain))
    elif _VALUE_CHECKS.get():
        lo, hi, bad, first = _image_stats(x)
        jax.debug.callback(
            lambda *s: _raise_if(
                _image_problem(float(s[0]), float(s[1]), int(s[2]), int(s[3]), domain)
            ),
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


_FEATURES_HINT = (
    " For inputs that are not images (e.g. points [batch, features]), build the attack with "
    "domain='features' (unbounded) or domain=advjax.validation.Domain('features', (lo, hi))."
)


def check_input_shape(x: Any, domain: Domain = IMAGES) -> None:
    """Static checks of the input batch: NHWC float images, or for ``kind="features"`` any float
    array ``[batch, ...]`` of rank >= 2."""
    if domain.kind == "image":
        if not hasattr(x, "shape") or not hasattr(x, "dtype"):
            raise TypeError(
                f"images must be an array [batch, height, width, channels], got {x!r:.80}"
            )
        try:
            check_image_shape(x)
        except ValueError as error:
            if x.ndim == 4:
                raise
            raise ValueError(f"{error}{_FEATURES_HINT}") from None
        return
    if not hasattr(x, "shape") or not hasattr(x, "dtype"):
        raise TypeError(f"inputs must be an array [batch, ...], got {x!r:.80}")
    if x.ndim < 2:
        raise ValueError(
            f"inputs of kind 'features' must have rank >= 2, [batch, features...]; got shape "
            f"{tuple(x.shape)}; for one feature per example use x[:, None]"
        )
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise TypeError(
            f"inputs must be floats, got dtype {x.dtype}; convert with x.astype(jnp.float32)"
        )


def check_batch(
    x: Any, y: Any = None, num_classes: int | None = None, domain: Domain = IMAGES
) -> None:
    """Checks a batch of inputs (NHWC images in [0, 1] by default; see ``Domain``) and, when
    given, its labels (or targets).

    Raises:
      TypeError: non-array or non-float inputs; non-integer labels; non-key keys.
      ValueError: wrong rank or layout, empty batch, mismatched batch sizes, NaN/inf or
        out-of-range values, labels outside [0, num_classes) (see the module docstring for how
        value errors surface under ``jit``).
    """
    check_input_shape(x, domain)
    if x.shape[0] == 0:
        noun = "images" if domain.kind == "image" else "inputs"
        raise ValueError(f"the batch is empty ({noun} of shape {tuple(x.shape)})")
    if y is not None:
        check_labels_static(y, x.shape[0])
    check_image_values(x, domain)
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
