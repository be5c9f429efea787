"""Restoring a training workdir for evaluation: its config, its variables, its threat model."""

from __future__ import annotations

import json
import os

import ml_collections

from advjax.eval import presets
from advjax.train.checkpoint import Checkpointer
from advjax.train.loop import build_model, initial_state


def load_config(workdir: str) -> ml_collections.ConfigDict:
    path = os.path.join(workdir, "config.json")
    if not os.path.exists(path):
        raise FileNotFoundError(
            f"no config.json in {workdir}: is it a workdir written by `python -m launch.train`?"
        )
    with open(path) as f:
        return ml_collections.ConfigDict(json.load(f))


def restore_variables(config, workdir: str, which: str, image_shape):
    model = build_model(config)
    template, _, _ = initial_state(config, model, image_shape, steps_per_epoch_=1)
    ckpt = Checkpointer(workdir, metric=config.validation.get("metric", "val_robust_accuracy"))
    if which in ("best", "latest"):
        step = ckpt.best_step() if which == "best" else ckpt.latest_step()
        if step is None and which == "best":  # no validation ran: fall back to the latest
            which, step = "latest", ckpt.latest_step()
    else:
        step, which = int(which), "latest"
    state = ckpt.restore(template, which=which, step=step)
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
