"""Workdirs: the config a run was trained with, its checkpoints, and the threat model to evaluate.

A workdir written by ``launch.train`` holds ``config.json``, ``checkpoints/`` (and ``best/``),
``metrics.jsonl`` and, after ``launch.evaluate``, ``report.json`` / ``report.md``.
"""

from __future__ import annotations

import json
import os

import jax
import ml_collections
from absl import logging

from advjax.eval import presets
from advjax.experiment.builders import build_defense, build_model, initial_state
from advjax.train.checkpoint import Checkpointer


def write_config(config: ml_collections.ConfigDict, workdir: str) -> None:
    """Writes ``config.json`` (process 0 only); warns when it differs from the one there."""
    if jax.process_index() != 0:
        return
    path = os.path.join(workdir, "config.json")
    text = config.to_json_best_effort(indent=2, sort_keys=True)
    if os.path.exists(path):
        with open(path) as f:
            previous = f.read()
        if previous != text:
            logging.warning("config differs from the one in %s; resuming with the new one", path)
    with open(path, "w") as f:
        f.write(text)


def load_config(workdir: str) -> ml_collections.ConfigDict:
    path = os.path.join(workdir, "config.json")
    if not os.path.exists(path):
        raise FileNotFoundError(
            f"no config.json in {workdir}: is it a workdir written by `python -m launch.train`?"
        )
    with open(path) as f:
        return ml_collections.ConfigDict(json.load(f))


def restore_variables(config, workdir: str, which: str, image_shape):
    """``(model, variables, {"kind", "step"})`` of checkpoint ``which`` (best, latest or a step;
    ``best`` falls back to the latest when no validation ran, ``latest`` to the newest intact
    step when newer ones are corrupt). Writes nothing: a read-only workdir can be evaluated.
    Raises ``CheckpointError`` (one line: which checkpoint, why, what to do)."""
    model = build_model(config)
    defense = build_defense(config, model, 1)
    template, _, _ = initial_state(config, model, image_shape, 1, defense.init_state())
    ckpt = Checkpointer(workdir, metric=config.validation.get("metric", "val_robust_accuracy"))
    try:
        step = None
        if which == "best":
            step = ckpt.best_step()
            if step is None:  # no validation ran: fall back to the latest
                which = "latest"
        elif which != "latest":
            if not str(which).isdigit():
                raise ValueError(f"unknown checkpoint {which!r}; valid: best, latest or a step")
            step, which = int(which), "latest"
        step, state = ckpt.load(template, which=which, step=step)
    finally:
        ckpt.close()
    return model, state.variables, {"kind": which, "step": int(step)}


def threat_settings(ec: ml_collections.ConfigDict, num_classes: int) -> presets.ThreatSettings:
    """The suite's threat model from a config's ``evaluate`` section.

    Workdirs written before ``evaluate.eps`` existed kept the attack under ``evaluate.attack``;
    its eps and step size are used then.
    """
    legacy = ec.get("attack") or {}
    eps_value = ec.get("eps", legacy.get("eps"))
    if eps_value is None:
        raise ValueError("the config's `evaluate` section has no `eps`; add evaluate.eps='0.3'")
    eps, eps_text = presets.parse_eps(eps_value)
    step = ec.get("step_size", legacy.get("step_size"))
    return presets.ThreatSettings(
        norm=ec.get("norm", "linf"),
        eps=eps,
        eps_text=eps_text,
        step_size=float(step) if step else None,
        restarts=int(ec.get("restarts", 1)),
        num_classes=num_classes,
        **{
            name: type(default)(ec[name])
            for name, default in _SPATIAL_DEFAULTS.items()
            if ec.get(name) is not None
        },
    )


# Spatial threat-model fields that `evaluate` configs may set (defaults: presets.ThreatSettings).
_SPATIAL_DEFAULTS = {
    name: getattr(presets.ThreatSettings(), name)
    for name in (
        "max_angle",
        "max_translation",
        "eps_flow",
        "eps_affine",
        "spatial_steps",
        "padding",
    )
}
