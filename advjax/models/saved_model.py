"""A portable saved model: a JSON header and msgpack variables, loadable without PyTorch.

A saved model is a directory with two files:

* ``model.json``: the header, ``{"format": "advjax-saved-model", "format_version": 1, "model":
  <MODELS registry name>, "kwargs": <constructor kwargs>, "input_shape": [H, W, C],
  "advjax_version": ..., "variables_sha256": <sha256 of variables.msgpack>, "provenance": {...}}``.
  ``provenance`` is free-form (``launch/convert.py`` records the source checkpoint's file name,
  sha256 and arch).
* ``variables.msgpack``: the variables (``params`` and, for models with BatchNorm,
  ``batch_stats``) serialized with ``flax.serialization.msgpack_serialize``: no pickle, nothing
  executed on load.

``load_model(path) -> (model, variables)`` rebuilds ``get_model(model, **kwargs)`` and checks the
file's checksum and that the variable tree (names and shapes) is the model's at ``input_shape``;
an unknown model name, a newer format, a corrupted file or a mismatched tree raise ``ValueError``
naming the problem. JSON has no tuples: list-valued kwargs (``mean``, ``std``, ``input_hw``) come
back as tuples, so the model stays hashable (``make_model_fn``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import serialization

import advjax
from advjax.models import MODELS, get_model
from advjax.models.functional import init_variables

FORMAT = "advjax-saved-model"
FORMAT_VERSION = 1
HEADER_FILE = "model.json"
VARIABLES_FILE = "variables.msgpack"


def default_input_shape(model_name: str) -> tuple[int, int, int]:
    """HWC input used to check a model's variable tree: 28x28x1 for ``mnist_*``, else 32x32x3."""
    return (28, 28, 1) if model_name.startswith("mnist") else (32, 32, 3)


def model_spec(model: nn.Module) -> tuple[str, dict[str, Any]]:
    """The registry name of a zoo ``model`` and the constructor kwargs that differ from defaults."""
    names = [name for name, factory in MODELS.items() if type(model) is factory]
    if not names:
        raise ValueError(f"{type(model).__name__} is not a registered model (advjax.models.MODELS)")
    kwargs = {}
    for field in dataclasses.fields(model):
        if not field.init or field.name in ("parent", "name"):
            continue
        value = getattr(model, field.name)
        if field.default is dataclasses.MISSING or value != field.default:
            kwargs[field.name] = value
    return names[0], kwargs


def _tuples(value: Any) -> Any:
    """JSON lists back to tuples (Flax module attributes must be hashable)."""
    if isinstance(value, list):
        return tuple(_tuples(v) for v in value)
    if isinstance(value, dict):
        return {k: _tuples(v) for k, v in value.items()}
    return value


def _leaves(tree: Mapping[str, Any], prefix: str = "") -> dict[str, tuple[int, ...]]:
    """``{"collection/module/.../leaf": shape}`` for a nested dict of arrays."""
    out: dict[str, tuple[int, ...]] = {}
    for key, value in tree.items():
        path = f"{prefix}/{key}" if prefix else str(key)
        if isinstance(value, Mapping):
            out.update(_leaves(value, path))
        else:
            out[path] = tuple(np.shape(value))
    return out


def _check_tree(variables: Mapping[str, Any], model: nn.Module, input_shape: Sequence[int]) -> None:
    """Raise ``ValueError`` unless ``variables`` has exactly the model's leaves and shapes."""
    expected = jax.eval_shape(lambda: init_variables(model, jax.random.key(0), input_shape))
    want, got = _leaves(expected), _leaves(variables)
    problems = [
        f"{label}: {', '.join(paths)}"
        for label, paths in (
            ("missing", sorted(set(want) - set(got))),
            ("unexpected", sorted(set(got) - set(want))),
            (
                "mis-shaped",
                [
                    f"{p} {got[p]} (expected {want[p]})"
                    for p in sorted(want)
                    if got.get(p, want[p]) != want[p]
                ],
            ),
        )
        if paths
    ]
    if problems:
        raise ValueError(
            f"variables do not match {type(model).__name__} at input {tuple(input_shape)}: "
            + "; ".join(problems)
        )


def save_model(
    path: str | os.PathLike,
    model_name: str,
    model_kwargs: Mapping[str, Any],
    variables: Mapping[str, Any],
    *,
    input_shape: Sequence[int] | None = None,
    provenance: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``variables`` of ``get_model(model_name, **model_kwargs)`` to directory ``path``.

    The tree is checked against the model first (``input_shape`` HWC, default
    :func:`default_input_shape`). Returns the directory.
    """
    model = get_model(model_name, **model_kwargs)
    input_shape = tuple(input_shape or default_input_shape(model_name))
    variables = {k: v for k, v in variables.items() if k in ("params", "batch_stats")}
    _check_tree(variables, model, input_shape)
    payload = serialization.msgpack_serialize(jax.tree.map(np.asarray, variables))
    header = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "model": model_name,
        "kwargs": dict(model_kwargs),
        "input_shape": list(input_shape),
        "advjax_version": advjax.__version__,
        "variables_sha256": hashlib.sha256(payload).hexdigest(),
        "provenance": dict(provenance or {}),
    }
    directory = Path(path)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / VARIABLES_FILE).write_bytes(payload)
    (directory / HEADER_FILE).write_text(json.dumps(header, indent=2, sort_keys=True) + "\n")
    return directory


def read_header(path: str | os.PathLike) -> dict[str, Any]:
    """The JSON header of the saved model in directory ``path`` (checked for format and version)."""
    file = Path(path) / HEADER_FILE
    if not file.is_file():
        raise ValueError(f"{path}: not an advjax saved model (no {HEADER_FILE})")
    header = json.loads(file.read_text())
    if header.get("format") != FORMAT:
        raise ValueError(f"{file}: format {header.get('format')!r}, expected {FORMAT!r}")
    if header.get("format_version", 0) > FORMAT_VERSION:
        raise ValueError(
            f"{file}: format version {header['format_version']} is newer than this advjax "
            f"reads ({FORMAT_VERSION}); upgrade advjax"
        )
    return header


def load_model(path: str | os.PathLike) -> tuple[nn.Module, dict[str, Any]]:
    """``(model, variables)`` from the saved model in directory ``path``; needs no PyTorch."""
    header = read_header(path)
    try:
        model = get_model(header["model"], **_tuples(header["kwargs"]))
    except (ValueError, TypeError) as err:
        raise ValueError(f"{path}: cannot build the saved model: {err}") from None
    payload = (Path(path) / VARIABLES_FILE).read_bytes()
    digest = hashlib.sha256(payload).hexdigest()
    if digest != header["variables_sha256"]:
        raise ValueError(
            f"{path}: {VARIABLES_FILE} has sha256 {digest}, the header says "
            f"{header['variables_sha256']} (corrupted or replaced)"
        )
    variables = serialization.msgpack_restore(payload)
    try:
        _check_tree(variables, model, header["input_shape"])
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from None
    return model, jax.tree.map(jnp.asarray, variables)
